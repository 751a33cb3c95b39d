//! While the relay is down, both communes edit the same document (subject, body and an
//! annotation each). When the relay comes back, A, B and R converge to identical heads
//! and identical JSON, with both edits and both annotations kept.

use std::time::Duration;

use scenario::{ThreeSites, wait_for};
use serde_json::{Value, json};

fn annotations(node: &scenario::Process, id: &str) -> Vec<Value> {
    let mut list = node.get(&format!("/api/v1/documents/{id}/annotations"))["annotations"]
        .as_array()
        .cloned()
        .unwrap();
    list.sort_by(|x, y| x["id"].as_str().cmp(&y["id"].as_str()));
    list
}

/// Position of `needle` in `text`, in Unicode scalar values as the API counts.
fn char_index(text: &str, needle: &str) -> usize {
    text[..text.find(needle).expect("needle present")]
        .chars()
        .count()
}

#[test]
fn concurrent_edits_during_a_relay_outage_merge_on_every_site() {
    let mut sites = ThreeSites::new();
    sites.start_all();
    let created = sites.shared_from_a(json!({
        "type": "Kế hoạch",
        "notation": "KH-UBND",
        "subject": "Kế hoạch phòng, chống bão năm 2026",
        "body": "Điều 1. Mục đích.\nĐiều 2. Tổ chức thực hiện.",
    }));
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/documents/{id}");

    sites.r.stop();

    sites.a.patch(
        &path,
        &json!({ "subject": "Kế hoạch phòng, chống bão và lũ năm 2026" }),
    );
    let body_len = created["body"].as_str().unwrap().chars().count();
    sites.a.patch(
        &path,
        &json!({ "body_splice": { "pos": body_len, "delete": 0, "insert": "\nĐiều 3. Hiệu lực (A)." } }),
    );
    sites.a.post(
        &format!("{path}/annotations"),
        &json!({ "text": "A: bổ sung kinh phí", "anchor": { "start": 0, "end": 7 }, "visibility": "audience" }),
    );

    sites.b.patch(
        &path,
        &json!({ "subject": "Kế hoạch phòng, chống thiên tai năm 2026" }),
    );
    sites.b.patch(
        &path,
        &json!({ "body_splice": { "pos": 0, "delete": 0, "insert": "Căn cứ Luật Phòng, chống thiên tai (B).\n" } }),
    );
    let b_body = sites.b.get(&path)["body"].as_str().unwrap().to_string();
    let start = char_index(&b_body, "Mục đích");
    sites.b.post(
        &format!("{path}/annotations"),
        &json!({ "text": "B: thống nhất", "anchor": { "start": start, "end": start + 8 }, "visibility": "audience" }),
    );
    assert_ne!(sites.a.get(&path)["heads"], sites.b.get(&path)["heads"]);

    sites.r.start();
    wait_for("A, B and R to converge", Duration::from_secs(60), || {
        let a = sites.a.get(&path);
        let b = sites.b.get(&path);
        let r = sites.r.get(&path);
        let converged = a == b
            && a["heads"] == r["heads"]
            && annotations(&sites.a, &id).len() == 2
            && annotations(&sites.b, &id).len() == 2;
        converged.then_some(())
    });

    let a = sites.a.get(&path);
    let body = a["body"].as_str().unwrap();
    assert!(
        body.starts_with("Căn cứ Luật Phòng, chống thiên tai (B).\nĐiều 1."),
        "{body}"
    );
    assert!(body.ends_with("Điều 3. Hiệu lực (A)."), "{body}");
    let subject = a["subject"].as_str().unwrap();
    assert!(
        subject == "Kế hoạch phòng, chống bão và lũ năm 2026"
            || subject == "Kế hoạch phòng, chống thiên tai năm 2026",
        "{subject}"
    );
    assert_eq!(
        a["heads"].as_array().unwrap().len(),
        2,
        "two concurrent branches merged"
    );

    let on_a = annotations(&sites.a, &id);
    assert_eq!(on_a, annotations(&sites.b, &id));
    let texts: Vec<&str> = on_a.iter().map(|n| n["text"].as_str().unwrap()).collect();
    assert!(texts.contains(&"A: bổ sung kinh phí") && texts.contains(&"B: thống nhất"));
    // Each anchor still covers the words it was put on, after the other side's insertion.
    let chars: Vec<char> = body.chars().collect();
    for n in &on_a {
        let (s, e) = (
            n["anchor"]["start"].as_u64().unwrap() as usize,
            n["anchor"]["end"].as_u64().unwrap() as usize,
        );
        let covered: String = chars[s..e].iter().collect();
        let expected = if n["text"] == "A: bổ sung kinh phí" {
            "Điều 1."
        } else {
            "Mục đích"
        };
        assert_eq!(covered, expected);
    }
    for n in &on_a {
        let r = sites
            .r
            .get(&format!("/api/v1/documents/{}", n["id"].as_str().unwrap()));
        assert_eq!(r["heads"], n["heads"]);
    }
}
