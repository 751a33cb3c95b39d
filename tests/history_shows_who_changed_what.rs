//! A document's history with a real node: each change says who made it, on which node
//! and when, and which fields it touched; an earlier version can be read and restored,
//! the restoring being one more change.

use scenario::{Kind, Process};
use serde_json::json;

#[test]
fn each_change_names_its_author_and_an_earlier_version_comes_back_as_a_new_change() {
    let root = tempfile::tempdir().unwrap();
    let mut a = Process::init(root.path(), "node-A", Kind::Node, "18562");
    a.add_user("chuyenvien", "member", "Trần Thị Bình", "Chuyên viên");
    a.add_user("chutich", "leader", "Nguyễn Văn An", "Chủ tịch");
    a.start();

    a.act_as(Some("chuyenvien"));
    let doc = a.post(
        "/api/v1/documents",
        &json!({ "type": "Kế hoạch", "subject": "Dự thảo kế hoạch", "body": "I. Mục đích." }),
    );
    let id = doc["id"].as_str().unwrap().to_string();
    let first = doc["heads"].clone();
    a.act_as(Some("chutich"));
    a.patch(
        &format!("/api/v1/documents/{id}"),
        &json!({ "subject": "Kế hoạch phòng chống lụt bão", "body": "I. Mục đích, yêu cầu." }),
    );

    let history = a.get(&format!("/api/v1/documents/{id}/history"));
    let changes = history["changes"].as_array().unwrap();
    assert_eq!(changes[0]["by"], "chutich", "{history}");
    assert_eq!(changes[0]["node"], a.id.as_str());
    assert_eq!(changes[0]["fields"], json!(["body", "subject"]));
    assert!(changes[0]["at"].as_str().unwrap().ends_with("+07:00"));
    assert!(
        changes.iter().skip(1).all(|c| c["by"] == "chuyenvien"),
        "{history}"
    );

    // The first version, as it was.
    let heads: Vec<&str> = first
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    let then = a.get(&format!("/api/v1/documents/{id}?at={}", heads.join(",")));
    assert_eq!(then["subject"], "Dự thảo kế hoạch");
    assert_eq!(then["body"], "I. Mục đích.");
    let r = a
        .try_get(&format!("/api/v1/documents/{id}?at={}", "ab".repeat(32)))
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);

    // Restored by the member: a new change on top, nothing rewritten.
    a.act_as(Some("chuyenvien"));
    let r = a
        .try_post(
            &format!("/api/v1/documents/{id}/restore"),
            &json!({ "heads": first }),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["subject"], "Dự thảo kế hoạch");
    assert_eq!(r.body["body"], "I. Mục đích.");
    let after = a.get(&format!("/api/v1/documents/{id}/history"));
    assert_eq!(after["total"], history["total"].as_u64().unwrap() + 1);
    assert_eq!(after["changes"][0]["by"], "chuyenvien");
    assert_eq!(after["changes"][1], history["changes"][0]);
}
