//! Bad input from a clerk gets a clear 4xx error in JSON and changes nothing.

use scenario::{Kind, Process};
use serde_json::json;

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut a = Process::init(root.path(), "node-A", Kind::Node, "18562");
    a.start();
    let doc = a.post(
        "/api/v1/documents",
        &json!({ "subject": "Thử", "body": "Việt Nam" }),
    );
    let id = doc["id"].as_str().unwrap();
    let path = format!("/api/v1/documents/{id}");

    let cases = [
        (a.try_get("/api/v1/documents/0190f5c2-8a1b-7c3d-9e4f-001122334455"), 404),
        (a.try_get("/api/v1/documents/..%2Fetc%2Fpasswd"), 400),
        (a.try_get("/api/v1/documents?limit=0"), 400),
        (a.try_get("/api/v1/documents?after=nonsense"), 400),
        (a.try_get("/api/v1/nothing-here"), 404),
        (a.try_post("/api/v1/documents", &json!({ "subjekt": "typo" })), 400),
        (a.try_post("/api/v1/documents", &json!({ "subject": 5 })), 400),
        (a.try_post("/api/v1/documents", &json!({ "audience": ["99999"] })), 400),
        (a.try_patch(&path, &json!({ "body_splice": { "pos": 9, "delete": 0, "insert": "x" } })), 400),
        (a.try_patch(&path, &json!({ "body_splice": { "pos": 2, "delete": 7, "insert": "" } })), 400),
        (a.try_patch(&path, &json!({ "audience": ["18568"] })), 400),
        (a.try_post(&format!("{path}/annotations"), &json!({ "text": "x", "anchor": { "start": 3, "end": 99 }, "visibility": "audience" })), 400),
        (a.try_post(&format!("{path}/annotations"), &json!({ "text": "x", "visibility": "secret" })), 400),
        (a.try_post(&format!("{path}/annotations"), &json!({ "text": "x", "visibility": "audience", "author": "Mallory" })), 400),
        (a.try_post("/api/v1/documents", &json!(["Quyết định", "01"])), 400),
        (a.try_post("/api/v1/documents", &json!({ "issued_date": "hôm qua" })), 400),
        (a.try_patch(&path, &json!({ "due_date": "2026-13-32" })), 400),
        // A state changes only through an action, and an action needs a signed-in user.
        (a.try_patch(&path, &json!({ "state": "filed" })), 400),
        (a.try_patch(&path, &json!({ "direction": "incoming" })), 400),
        (a.try_post("/api/v1/documents", &json!({ "direction": "sideways" })), 400),
        (a.try_post(&format!("{path}/actions"), &json!({ "action": "approve" })), 401),
        (a.try_post("/api/v1/login", &json!({ "user": "nobody", "password": "12345678" })), 401),
        (a.try_get("/api/v1/registers/daily/2026"), 400),
        (a.try_get("/api/v1/registers/outgoing/2026?format=pdf"), 400),
        (a.try_post("/api/v1/registers/outgoing/2026/close", &json!({})), 401),
        // What a page on another site could make the clerk's browser send.
        (a.try_raw("POST", "/api/v1/documents", &[("Content-Type", "text/plain"), ("Origin", "http://evil.example")], r#"{"subject":"csrf"}"#), 403),
        (a.try_raw("POST", "/api/v1/documents", &[("Content-Type", "application/json"), ("Origin", "http://evil.example")], r#"{"subject":"csrf"}"#), 403),
        (a.try_raw("GET", "/api/v1/status", &[("Host", "evil.example:7700")], ""), 421),
        // Errors axum raises before a handler runs have the same shape.
        (a.try_raw("PUT", &path, &[("Content-Type", "application/json")], "{}"), 405),
        (a.try_raw("POST", "/api/v1/documents", &[("Content-Type", "application/json")], &format!(r#"{{"body":"{}"}}"#, "x".repeat(9 << 20))), 413),
    ];
    for (i, (reply, expected)) in cases.into_iter().enumerate() {
        let reply = reply.unwrap();
        assert_eq!(reply.status, expected, "case {i}: {}", reply.body);
        let message = reply.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("case {i}: {}", reply.body));
        assert!(
            message.len() > 10,
            "case {i}: unhelpful message {message:?}"
        );
    }

    let after = a.get(&path);
    assert_eq!(after, doc, "nothing changed");
    assert_eq!(a.get("/api/v1/status")["documents"], 1);

    // A deleted document takes no new annotations.
    let gone = a.post("/api/v1/documents", &json!({ "subject": "Bỏ" }));
    let gone_path = format!("/api/v1/documents/{}", gone["id"].as_str().unwrap());
    assert_eq!(
        a.try_raw("DELETE", &gone_path, &[], "").unwrap().status,
        200
    );
    let r = a
        .try_post(
            &format!("{gone_path}/annotations"),
            &json!({ "text": "x", "visibility": "audience" }),
        )
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    // The node's own page (same origin) and an anchor at the very end of the body are fine.
    let own = format!("http://{}", a.http);
    let r = a
        .try_raw(
            "POST",
            &format!("{path}/annotations"),
            &[("Content-Type", "application/json"), ("Origin", &own)],
            r#"{"text": "cuối", "anchor": {"start": 8, "end": 8}, "visibility": "audience"}"#,
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["anchor"], json!({"start": 8, "end": 8}));
    assert_eq!(r.body["author"], a.id);
    assert_eq!(
        a.get(&format!("{path}/annotations"))["annotations"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
