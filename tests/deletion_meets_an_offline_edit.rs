//! A deletes a document while B, cut off, edits it. Once they reconnect through R, the
//! document is deleted everywhere and shows the same conflict on A, B and R: the edit
//! the deletion had not seen, by whom and on which fields. Nothing is lost (B's edit is
//! in the record) and nothing comes back silently; when A's clerk restores it, it comes
//! back everywhere with B's edit.

use std::time::Duration;

use scenario::{ThreeSites, wait_for};
use serde_json::{Value, json};

#[test]
fn a_deletion_and_an_offline_edit_end_in_the_same_visible_conflict() {
    let mut sites = ThreeSites::new();
    sites.start_all();
    let created = sites.shared_from_a(json!({
        "type": "Kế hoạch",
        "notation": "KH-UBND",
        "subject": "Kế hoạch diễn tập phòng cháy",
        "body": "Điều 1. Thời gian diễn tập.",
    }));
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/documents/{id}");

    // The relay goes down: A and B cannot see each other.
    sites.r.stop();
    let deleted = sites.a.try_delete(&path).unwrap();
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(deleted.body["deleted"], true);
    assert_eq!(deleted.body["deletion_conflict"], Value::Null);
    sites.b.patch(
        &path,
        &json!({ "subject": "Kế hoạch diễn tập phòng cháy, chữa cháy năm 2026" }),
    );

    sites.r.start();
    let heads_alike = || {
        let a = sites.a.get(&path);
        let b = sites.b.get(&path);
        let r = sites.r.get(&path);
        (a["heads"] == b["heads"] && b["heads"] == r["heads"]).then_some((a, b, r))
    };
    let (a, b, r) = wait_for(
        "A, B and R to converge",
        Duration::from_secs(60),
        heads_alike,
    );

    for (site, doc) in [("A", &a), ("B", &b), ("R", &r)] {
        assert_eq!(doc["deleted"], true, "{site} holds it deleted");
        let edits = doc["deletion_conflict"]["edits"]
            .as_array()
            .unwrap_or_else(|| panic!("{site} shows no conflict: {doc}"));
        assert_eq!(edits.len(), 1, "{site}: {doc}");
        assert_eq!(edits[0]["fields"], json!(["subject"]), "{site}");
    }
    assert_eq!(a["deletion_conflict"], b["deletion_conflict"]);
    assert_eq!(a["deletion_conflict"], r["deletion_conflict"]);
    // The edit is kept in the deleted record, not lost.
    assert_eq!(
        a["subject"],
        "Kế hoạch diễn tập phòng cháy, chữa cháy năm 2026"
    );
    // Both nodes list it among the documents waiting for a decision; the ordinary list
    // leaves deleted documents out.
    for node in [&sites.a, &sites.b] {
        let conflicts = node.get("/api/v1/conflicts");
        assert!(
            conflicts["documents"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["id"] == id.as_str()),
            "{}: {conflicts}",
            node.name
        );
        assert!(!node.documents().iter().any(|d| d["id"] == id.as_str()));
    }

    // Only the owning unit decides; B's try changes nothing.
    let refused = sites
        .b
        .try_post(
            &format!("{path}/deletion"),
            &json!({ "decision": "restore" }),
        )
        .unwrap();
    assert_eq!(refused.status, 403, "{}", refused.body);
    let bad = sites
        .a
        .try_post(&format!("{path}/deletion"), &json!({ "decision": "maybe" }))
        .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);

    // A's clerk restores it: it comes back on every site, with B's edit.
    let restored = sites
        .a
        .try_post(
            &format!("{path}/deletion"),
            &json!({ "decision": "restore" }),
        )
        .unwrap();
    assert_eq!(restored.status, 200, "{}", restored.body);
    let (a, b, r) = wait_for(
        "the restore to reach B and R",
        Duration::from_secs(60),
        || heads_alike().filter(|(a, _, _)| a["deleted"] == false),
    );
    for (site, doc) in [("A", &a), ("B", &b), ("R", &r)] {
        assert_eq!(doc["deleted"], false, "{site}");
        assert_eq!(doc["deletion_conflict"], Value::Null, "{site}");
    }
    assert_eq!(
        b["subject"],
        "Kế hoạch diễn tập phòng cháy, chữa cháy năm 2026"
    );
    assert!(sites.b.documents().iter().any(|d| d["id"] == id.as_str()));
}
