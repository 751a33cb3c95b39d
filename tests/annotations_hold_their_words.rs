//! Annotations on a body written in decomposed Unicode (NFD, as some keyboards and PDF
//! extractors write Vietnamese): the word they mark stays marked through concurrent
//! edits on two nodes, text survives byte for byte, offsets inside a character are
//! refused, and who may read a note (private, shared with named people, everyone who
//! sees the document) holds on the node and over sync.

use std::time::Duration;

use scenario::{ThreeSites, UNIT_B, wait_for};
use serde_json::{Value, json};
use unicode_normalization::UnicodeNormalization;

fn nfd(s: &str) -> String {
    s.nfd().collect()
}

/// Position of `needle` in `text`, in Unicode scalar values as the API counts.
fn char_index(text: &str, needle: &str) -> usize {
    text[..text.find(needle).expect("needle present")]
        .chars()
        .count()
}

fn chars(text: &str, start: usize, end: usize) -> String {
    text.chars().skip(start).take(end - start).collect()
}

#[test]
fn an_annotation_on_an_nfd_word_stays_on_it_through_concurrent_edits() {
    let mut sites = ThreeSites::new();
    sites.start_all();
    let body = nfd("Điều 1. Nước Cộng hòa xã hội chủ nghĩa Việt Nam là một nước độc lập.");
    let word = nfd("Việt");
    assert_eq!(word.chars().count(), 6, "V i e + dot below + circumflex t");
    let created = sites.a.post(
        "/api/v1/documents",
        &json!({
            "type": "Hiến pháp",
            "subject": nfd("Trích Hiến pháp"),
            "body": body,
            "audience": [UNIT_B],
        }),
    );
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/documents/{id}");
    assert_eq!(
        created["body"].as_str().unwrap().as_bytes(),
        body.as_bytes()
    );

    let start = char_index(&body, &word);
    let end = start + 6;
    // An end between `e` and its marks splits the character `ệ`: refused, with the
    // offsets that would do.
    let inside = sites
        .a
        .try_post(
            &format!("{path}/annotations"),
            &json!({ "text": "x", "anchor": { "start": start, "end": start + 3 }, "visibility": "audience" }),
        )
        .unwrap();
    assert_eq!(inside.status, 400, "{}", inside.body);
    let message = inside.body["error"].as_str().unwrap();
    assert!(message.contains("inside the character"), "{message}");
    assert!(
        message.contains(&format!("use {} or {}", start + 2, start + 5)),
        "{message}"
    );

    let note_text = nfd("Kiểm tra tên nước");
    let note = sites.a.post(
        &format!("{path}/annotations"),
        &json!({ "text": note_text, "anchor": { "start": start, "end": end }, "visibility": "audience" }),
    );
    let note_id = note["id"].as_str().unwrap().to_string();
    assert_eq!(note["anchor"], json!({ "start": start, "end": end }));
    let notes_path = format!("{path}/annotations");
    wait_for(
        "B to hold the document and its note",
        Duration::from_secs(30),
        || {
            let r = sites
                .b
                .try_get(&notes_path)
                .ok()
                .filter(|r| r.status == 200)?;
            (r.body["annotations"].as_array()?.len() == 1).then_some(())
        },
    );
    assert_eq!(
        sites.b.get(&path)["body"].as_str().unwrap().as_bytes(),
        body.as_bytes(),
        "NFD reaches B byte for byte"
    );

    // Apart, A writes before the word and B inside it: B replaces the decomposed `ệ`
    // (three scalar values) with the composed one, and a splice that would split the
    // character is refused.
    sites.r.stop();
    sites.a.patch(
        &path,
        &json!({ "body_splice": { "pos": 0, "delete": 0, "insert": "Chương I. " } }),
    );
    let split = sites
        .b
        .try_patch(
            &path,
            &json!({ "body_splice": { "pos": start + 3, "delete": 1, "insert": "" } }),
        )
        .unwrap();
    assert_eq!(split.status, 400, "{}", split.body);
    sites.b.patch(
        &path,
        &json!({ "body_splice": { "pos": start + 2, "delete": 3, "insert": "\u{1EC7}" } }),
    );
    sites.r.start();

    let expected = format!("Chương I. {}", body.replacen(&word, "Vi\u{1EC7}t", 1));
    let converged = |node: &scenario::Process| -> Option<(Value, Value)> {
        let doc = node.get(&path);
        (doc["body"] == expected.as_str()).then_some(())?;
        let notes = node.get(&notes_path)["annotations"].clone();
        Some((doc, notes))
    };
    let (doc_a, notes_a) = wait_for("A to merge B's edit", Duration::from_secs(60), || {
        converged(&sites.a)
    });
    let (doc_b, notes_b) = wait_for("B to merge A's edit", Duration::from_secs(60), || {
        converged(&sites.b)
    });
    assert_eq!(doc_a["heads"], doc_b["heads"]);
    assert_eq!(
        notes_a, notes_b,
        "the same note, anchored alike, on both nodes"
    );
    let body_now = doc_a["body"].as_str().unwrap();
    assert_eq!(body_now.as_bytes(), expected.as_bytes(), "byte for byte");
    let anchor = &notes_a[0]["anchor"];
    let (s, e) = (
        anchor["start"].as_u64().unwrap() as usize,
        anchor["end"].as_u64().unwrap() as usize,
    );
    assert_eq!(
        chars(body_now, s, e),
        "Vi\u{1EC7}t",
        "the note marks exactly the word"
    );
    assert_eq!(notes_a[0]["id"], note_id.as_str());
    assert_eq!(
        notes_a[0]["text"].as_str().unwrap().as_bytes(),
        note_text.as_bytes()
    );
}

#[test]
fn who_may_read_a_note_holds_on_the_node_and_over_sync() {
    let mut sites = ThreeSites::new();
    sites
        .a
        .add_user("chu.tich", "leader", "Nguyễn Văn An", "Chủ tịch");
    sites
        .a
        .add_user("can.bo", "member", "Trần Thị Bình", "Công chức");
    sites
        .a
        .add_user("van.thu", "clerk", "Lê Văn Cường", "Văn thư");
    sites.start_all();
    sites.a.act_as(Some("chu.tich"));
    let created = sites.a.post(
        "/api/v1/documents",
        &json!({ "subject": "Dự thảo quy chế", "body": "Điều 1. Phạm vi.", "audience": [UNIT_B] }),
    );
    let id = created["id"].as_str().unwrap().to_string();
    let notes = format!("/api/v1/documents/{id}/annotations");
    let post = |v: Value| sites.a.post(&notes, &v)["id"].as_str().unwrap().to_string();
    let private = post(json!({ "text": "ghi chú riêng", "visibility": "private" }));
    let shared = post(
        json!({ "text": "nhờ chị Bình xem", "visibility": "shared", "shared_with": ["can.bo"] }),
    );
    let everyone = post(json!({ "text": "góp ý chung", "visibility": "audience" }));
    let bad = sites
        .a
        .try_post(
            &notes,
            &json!({ "text": "x", "visibility": "shared", "shared_with": ["khong.co"] }),
        )
        .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);

    let seen = |node: &mut scenario::Process, user: Option<&str>| -> Vec<String> {
        node.act_as(user);
        let mut ids: Vec<String> = node.get(&notes)["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        seen(&mut sites.a, Some("chu.tich")),
        sorted(vec![private.clone(), shared.clone(), everyone.clone()])
    );
    assert_eq!(
        seen(&mut sites.a, Some("can.bo")),
        sorted(vec![shared.clone(), everyone.clone()])
    );
    assert_eq!(seen(&mut sites.a, Some("van.thu")), vec![everyone.clone()]);

    // Replies and the resolved flag; a note one may not read is not found.
    sites.a.act_as(Some("can.bo"));
    let replied = sites.a.post(
        &format!("{notes}/{shared}/replies"),
        &json!({ "text": "em đã xem, đồng ý" }),
    );
    assert_eq!(replied["replies"][0]["author"], "can.bo");
    sites.a.act_as(Some("van.thu"));
    let hidden = sites
        .a
        .try_patch(&format!("{notes}/{shared}"), &json!({ "resolved": true }))
        .unwrap();
    assert_eq!(hidden.status, 404, "{}", hidden.body);
    sites.a.act_as(Some("chu.tich"));
    let resolved = sites
        .a
        .patch(&format!("{notes}/{shared}"), &json!({ "resolved": true }));
    assert_eq!(resolved["resolved"], true);
    assert_eq!(resolved["resolved_by"], "chu.tich");

    // Only the note for everyone leaves the unit; B replies to it, and A sees the reply.
    wait_for("B to get the shared note", Duration::from_secs(30), || {
        (seen(&mut sites.b, None) == vec![everyone.clone()]).then_some(())
    });
    let held = sites.b.stored_ids();
    assert!(
        !held.contains(&private) && !held.contains(&shared),
        "{held:?}"
    );
    sites.b.post(
        &format!("{notes}/{everyone}/replies"),
        &json!({ "text": "Xã Lộc Hà thống nhất" }),
    );
    sites.a.act_as(Some("van.thu"));
    wait_for("A to see B's reply", Duration::from_secs(30), || {
        let list = sites.a.get(&notes)["annotations"].clone();
        (list[0]["replies"][0]["text"] == "Xã Lộc Hà thống nhất").then_some(())
    });

    // A user of B with the same sign-in name as A's chairman is someone else: B's
    // "chu.tich" does not change the chairman's note, and reads only what B may.
    sites
        .b
        .add_user("chu.tich", "leader", "Phạm Văn Đông", "Chủ tịch");
    let refused = {
        sites.b.act_as(Some("chu.tich"));
        sites
            .b
            .try_patch(&format!("{notes}/{everyone}"), &json!({ "text": "đã sửa" }))
            .unwrap()
    };
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(seen(&mut sites.b, Some("chu.tich")), vec![everyone.clone()]);
    sites.a.act_as(Some("chu.tich"));
    assert_eq!(
        sites.a.get(&notes)["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == everyone.as_str())
            .unwrap()["text"],
        "góp ý chung"
    );
}
