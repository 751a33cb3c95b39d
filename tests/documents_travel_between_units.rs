//! An official document's way from one commune to the province and to another commune,
//! with real processes: Xã Thạch Hà (A) and Xã Lộc Hà (B) under the cluster relay of the
//! former Huyện Thạch Hà, the province relay of Hà Tĩnh above it, and the province
//! office's node (P) below that. A's member drafts, A's chairman approves and signs, A's
//! clerk numbers (number 1 of the year), applies the organisation's signature, registers
//! and dispatches to P and B; each sees it as incoming with both signatures verifiable,
//! registers and acknowledges it, and A sees both acknowledgements. A document signed and
//! edited afterwards shows its signature valid for the signed version only, on every node.

use std::time::Duration;

use scenario::{Kind, Process, roster, wait_for};
use serde_json::{Value, json};

const A: &str = "18562";
const B: &str = "18568";
const PROVINCE: &str = "42";
const CLUSTER: &str = "42-445";
const SETTLE: Duration = Duration::from_secs(60);

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// The incoming document a node keeps for `source`, once it is in its incoming queue.
fn incoming(node: &Process, source: &str) -> Option<Value> {
    node.get("/api/v1/documents?direction=incoming&state=received")["documents"]
        .as_array()?
        .iter()
        .find(|d| d["source"]["document"] == source)
        .map(|d| node.get(&format!("/api/v1/documents/{}", id(d))))
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn assert_signatures_hold(node: &str, checks: &Value, kinds: &[&str]) {
    let checks = checks.as_array().unwrap();
    let found: Vec<&str> = checks.iter().map(|c| c["kind"].as_str().unwrap()).collect();
    assert_eq!(found, kinds, "signatures on {node}: {checks:?}");
    for c in checks {
        assert_eq!(c["valid"], true, "on {node}: {c}");
        assert_eq!(c["covers_current"], true, "on {node}: {c}");
    }
}

#[test]
fn a_signed_numbered_dispatch_arrives_as_incoming_and_its_acknowledgements_return() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let mut province = Process::init(dir, "relay-province", Kind::Relay, PROVINCE);
    let mut cluster = Process::init(dir, "relay-cluster", Kind::Relay, CLUSTER);
    let mut a = Process::init(dir, "node-A", Kind::Node, A);
    let mut b = Process::init(dir, "node-B", Kind::Node, B);
    let mut p = Process::init(dir, "node-P", Kind::Node, PROVINCE);
    let roster = roster(
        dir,
        "roster.toml",
        &[
            (&a, A),
            (&b, B),
            (&p, PROVINCE),
            (&cluster, CLUSTER),
            (&province, PROVINCE),
        ],
    );
    let roster = roster.to_str().unwrap();
    province.with_args(&["--roster", roster]);
    let up = province.addr();
    cluster.with_args(&["--roster", roster, "--upstream", &up]);
    let down = cluster.addr();
    a.with_args(&["--relay", &down, "--registrar", "--roster", roster]);
    b.with_args(&["--relay", &down, "--registrar", "--roster", roster]);
    p.with_args(&["--relay", &up, "--registrar", "--roster", roster]);
    a.add_user("chuyenvien", "member", "Trần Thị Bình", "Chuyên viên");
    a.add_user("chutich", "leader", "Nguyễn Văn An", "Chủ tịch");
    a.add_user("vanthu", "clerk", "Lê Thị Cúc", "Văn thư");
    b.add_user("vanthu", "clerk", "Phạm Văn Dũng", "Văn thư");
    b.add_user("chutich", "leader", "Đỗ Văn Giang", "Chủ tịch");
    p.add_user("vanthu", "clerk", "Hoàng Thị Em", "Văn thư");
    for proc in [&mut province, &mut cluster, &mut a, &mut b, &mut p] {
        proc.start();
    }

    // Once users exist, nothing but sign-in and status answers without a token.
    let r = a.try_get("/api/v1/documents").unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("sign in"));

    a.act_as(Some("chuyenvien"));
    let doc = id(&a.post(
        "/api/v1/documents",
        &json!({
            "type": "Công văn",
            "notation": "UBND-VP",
            "issuer": "UBND xã Thạch Hà",
            "place": "Thạch Hà",
            "subject": "V/v báo cáo tình hình thiệt hại do bão số 3",
            "body": "Kính gửi: UBND tỉnh Hà Tĩnh; UBND xã Lộc Hà.\nUBND xã Thạch Hà báo cáo …",
            "recipients": ["UBND tỉnh Hà Tĩnh", "UBND xã Lộc Hà", "Lưu: VT"],
        }),
    ));
    a.action(&doc, "submit", json!({}));

    // A step out of order, or in the wrong role, is refused and changes nothing.
    a.act_as(Some("vanthu"));
    let heads = a.get(&format!("/api/v1/documents/{doc}"))["heads"].clone();
    let r = a.try_action(&doc, &json!({ "action": "number" }));
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("only to a document that is signed"),
        "{}",
        r.body
    );
    let r = a.try_action(&doc, &json!({ "action": "approve" }));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("for a leader"));
    assert_eq!(a.get(&format!("/api/v1/documents/{doc}"))["heads"], heads);

    a.act_as(Some("chutich"));
    a.action(&doc, "approve", json!({}));
    a.action(&doc, "sign", json!({}));
    a.act_as(Some("vanthu"));
    let numbered = a.action(&doc, "number", json!({}));
    assert_eq!(numbered["state"], "numbered");
    assert_eq!(numbered["number"], "01", "the first number of the year");
    assert_eq!(numbered["registration"]["number"], 1);
    a.action(&doc, "org_sign", json!({}));
    a.action(&doc, "register", json!({}));
    let sent = a.action(&doc, "dispatch", json!({ "to": [PROVINCE, B] }));
    assert_eq!(sent["state"], "dispatched");
    assert_signatures_hold("A", &sent["signatures"], &["personal", "organisation"]);
    assert_eq!(sent["signatures"][0]["name"], "Nguyễn Văn An");
    assert_eq!(sent["signatures"][0]["title"], "Chủ tịch");
    assert_eq!(sent["signatures"][0]["signer_known"], true);
    assert_eq!(sent["signatures"][1]["signer_known"], true);
    let steps: Vec<&str> = sent["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "submit", "approve", "sign", "number", "org_sign", "register", "dispatch"
        ]
    );
    assert!(
        sent["history"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["node"] == a.id.as_str() && s["at"].as_str().unwrap().ends_with("+07:00"))
    );

    // A secret document is refused at dispatch with the reason.
    a.act_as(Some("chuyenvien"));
    let secret = id(&a.post(
        "/api/v1/documents",
        &json!({ "type": "Công văn", "subject": "Tài liệu mật", "secrecy": "Mật" }),
    ));
    a.action(&secret, "submit", json!({}));
    a.act_as(Some("chutich"));
    a.action(&secret, "approve", json!({}));
    a.action(&secret, "sign", json!({}));
    a.act_as(Some("vanthu"));
    a.action(&secret, "number", json!({}));
    a.action(&secret, "org_sign", json!({}));
    a.action(&secret, "register", json!({}));
    let r = a.try_action(&secret, &json!({ "action": "dispatch", "to": [PROVINCE] }));
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("never dispatched through sync")
    );

    // At P and at B: an incoming document with the sender's number, notation and
    // signatures, checked there.
    for (name, node) in [("P", &mut p), ("B", &mut b)] {
        node.act_as(Some("vanthu"));
        let inc = wait_for(&format!("the dispatch to arrive at {name}"), SETTLE, || {
            incoming(&*node, &doc)
        });
        assert_eq!(inc["direction"], "incoming");
        assert_eq!(inc["state"], "received");
        assert_eq!(inc["number"], "01");
        assert_eq!(inc["notation"], "UBND-VP");
        assert_eq!(inc["source"]["unit"], A);
        let source = &inc["source_document"];
        assert_eq!(source["held"], true, "on {name}: {inc}");
        assert_eq!(source["number"], "01");
        assert_signatures_hold(name, &source["signatures"], &["personal", "organisation"]);
        // The organisation's key is A's node, on the roster for A's unit; the chairman's
        // key is known only on A.
        assert_eq!(source["signatures"][1]["signer_known"], true, "on {name}");
        assert_eq!(
            source["signatures"][0]["signer_known"],
            Value::Null,
            "on {name}"
        );
        let inc_id = id(&inc);
        let registered = node.action(&inc_id, "register", json!({}));
        assert_eq!(registered["arrival_number"], "01", "on {name}");
        node.action(&inc_id, "acknowledge", json!({}));
    }
    assert!(
        p.stored_ids().contains(&doc) && b.stored_ids().contains(&doc),
        "the dispatched document itself is held by its recipients"
    );
    // An issued document is fixed: neither a recipient nor its own office edits it.
    let r = b
        .try_patch(
            &format!("/api/v1/documents/{doc}"),
            &json!({ "subject": "Sửa bởi Lộc Hà" }),
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("content is fixed")
    );
    a.act_as(Some("chuyenvien"));
    let r = a
        .try_patch(
            &format!("/api/v1/documents/{doc}"),
            &json!({ "body": "khác" }),
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    let r = a.try_delete(&format!("/api/v1/documents/{doc}")).unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("not deleted"));
    assert!(!p.stored_ids().contains(&secret) && !b.stored_ids().contains(&secret));

    // Both acknowledgements reach the sender's copy.
    let back = wait_for("both acknowledgements to reach A", SETTLE, || {
        let d = a.get(&format!("/api/v1/documents/{doc}"));
        (d["acknowledged_by_all"] == true).then_some(d)
    });
    let receipts = back["receipts"].as_array().unwrap();
    let units: Vec<&str> = receipts
        .iter()
        .map(|r| r["unit"].as_str().unwrap())
        .collect();
    assert_eq!(units, [B, PROVINCE]);
    for r in receipts {
        assert_eq!(r["acknowledged"], true, "{r}");
        assert_eq!(r["acknowledged_by"], "vanthu");
        assert_eq!(r["arrival_number"], "01");
    }
    // The outgoing register prints it with the acknowledgements.
    let year = back["registration"]["year"].as_i64().unwrap();
    // The one outgoing register A keeps this year, found without naming its body, and
    // by its body however it is written.
    let book = a.get(&format!("/api/v1/registers/outgoing/{year}"));
    assert_eq!(book["body"], "UBND xã Thạch Hà");
    let same = a.get(&format!(
        "/api/v1/registers/outgoing/{year}?body={}",
        encode("ubnd XÃ thạch hà")
    ));
    assert_eq!(same["entries"], book["entries"]);
    let entry = &book["entries"][0];
    assert_eq!(entry["cells"][0], "01/UBND-VP");
    assert_eq!(entry["cells"][3], "Chủ tịch Nguyễn Văn An");
    assert_eq!(entry["cells"][8], "Xã Lộc Hà, Tỉnh Hà Tĩnh", "{entry}");

    // A second sender: the province's arrival numbers run on, whoever sends.
    b.act_as(Some("chutich"));
    let reply = id(&b.post(
        "/api/v1/documents",
        &json!({ "type": "Báo cáo", "notation": "BC-UBND", "subject": "Báo cáo của Lộc Hà" }),
    ));
    for step in ["submit", "approve", "sign"] {
        b.action(&reply, step, json!({}));
    }
    b.act_as(Some("vanthu"));
    for step in ["number", "org_sign", "register"] {
        b.action(&reply, step, json!({}));
    }
    b.action(&reply, "dispatch", json!({ "to": [PROVINCE] }));
    let second = wait_for("B's report to arrive at P", SETTLE, || incoming(&p, &reply));
    assert_eq!(second["number"], "01", "B's own first number");
    let registered = p.action(&id(&second), "register", json!({}));
    assert_eq!(
        registered["arrival_number"], "02",
        "one arrival series at P"
    );
    let book = p.get(&format!("/api/v1/registers/incoming/{year}"));
    let arrivals: Vec<&str> = book["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["cells"][1].as_str().unwrap())
        .collect();
    assert_eq!(arrivals, ["01", "02"], "{book}");

    // (c) A document signed and then edited: valid for the signed version, not for the
    // current one, on every node that holds it.
    a.act_as(Some("chuyenvien"));
    let memo = id(&a.post(
        "/api/v1/documents",
        &json!({
            "type": "Kế hoạch",
            "issuer": "UBND Xã Thạch Hà",
            "subject": "Kế hoạch phòng chống thiên tai năm 2027",
            "body": "I. MỤC ĐÍCH\n1. Chủ động phòng ngừa.",
            "audience": [B, PROVINCE],
        }),
    ));
    a.action(&memo, "submit", json!({}));
    a.act_as(Some("chutich"));
    a.action(&memo, "approve", json!({}));
    let signed = a.action(&memo, "sign", json!({}));
    let signed_heads = signed["signatures"][0]["heads"].clone();
    a.act_as(Some("chuyenvien"));
    let edited = a.patch(
        &format!("/api/v1/documents/{memo}"),
        &json!({ "body": "I. MỤC ĐÍCH\n1. Chủ động phòng ngừa, ứng phó kịp thời." }),
    );
    let current = edited["heads"].clone();
    for (name, node) in [("A", &a), ("B", &b), ("P", &p)] {
        let check = wait_for(&format!("the edited memo on {name}"), SETTLE, || {
            let r = node
                .try_get(&format!("/api/v1/documents/{memo}/signatures"))
                .ok()?;
            (r.status == 200 && r.body["heads"] == current).then_some(r.body)
        });
        let sig = &check["signatures"][0];
        assert_eq!(
            check["signatures"].as_array().unwrap().len(),
            1,
            "on {name}"
        );
        assert_eq!(sig["valid"], true, "on {name}: {sig}");
        assert_eq!(sig["covers_current"], false, "on {name}: {sig}");
        assert_eq!(sig["heads"], signed_heads, "on {name}");
        assert!(
            sig["problem"]
                .as_str()
                .unwrap()
                .contains("edited after signing"),
            "on {name}: {sig}"
        );
    }
    // Offline, from the store alone, the same answer.
    let out = p.run(&["verify", &memo]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["heads"], current);
    assert_eq!(report["signatures"][0]["valid"], true);
    assert_eq!(report["signatures"][0]["covers_current"], false);
    assert_eq!(report["signatures"][0]["heads"], signed_heads);

    // What was not signed is not numbered: the leader signs the edited version first.
    a.act_as(Some("vanthu"));
    let r = a.try_action(&memo, &json!({ "action": "number" }));
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("edited after it was signed"),
        "{}",
        r.body
    );
    a.act_as(Some("chutich"));
    a.action(&memo, "sign", json!({}));
    a.act_as(Some("vanthu"));
    // The same issuing body however it is capitalised: the number after the dispatch's.
    assert_eq!(a.action(&memo, "number", json!({}))["number"], "02");
}
