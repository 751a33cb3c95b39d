//! Numbering with real processes. Two laptops of Xã Thạch Hà, offline, each take three
//! outgoing documents to signing and ask for their numbers; once they reach the unit's
//! registrar, the six hold six distinct consecutive numbers, on every node. Two nodes
//! wrongly both serving as registrar give one number twice; after they sync, the
//! duplicate is flagged on both, in the documents and in the printed register.

use std::collections::BTreeSet;
use std::time::Duration;

use scenario::{Kind, Process, roster, wait_for};
use serde_json::{Value, json};

const A: &str = "18562";
const SETTLE: Duration = Duration::from_secs(60);

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

fn with_office_users(node: &Process) {
    node.add_user("chutich", "leader", "Nguyễn Văn An", "Chủ tịch");
    node.add_user("vanthu", "clerk", "Lê Thị Cúc", "Văn thư");
}

/// Drafts a document and takes it to signed, then asks for its number as the clerk;
/// returns the document's id and what `number` answered.
fn draft_and_number(node: &mut Process, subject: &str) -> (String, Value) {
    node.act_as(Some("chutich"));
    let doc = id(&node.post(
        "/api/v1/documents",
        &json!({ "type": "Quyết định", "notation": "QĐ-UBND", "subject": subject }),
    ));
    for step in ["submit", "approve", "sign"] {
        node.action(&doc, step, json!({}));
    }
    node.act_as(Some("vanthu"));
    let numbered = node.action(&doc, "number", json!({}));
    (doc, numbered)
}

fn number_of(node: &Process, doc: &str) -> Option<u64> {
    let d = node.get(&format!("/api/v1/documents/{doc}"));
    d["registration"]["number"].as_u64()
}

#[test]
fn offline_laptops_queue_number_requests_and_the_registrar_numbers_all_six_once() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let mut registrar = Process::init(dir, "node-registrar", Kind::Node, A);
    let mut laptops = [
        Process::init(dir, "laptop-1", Kind::Node, A),
        Process::init(dir, "laptop-2", Kind::Node, A),
    ];
    let roster = roster(
        dir,
        "roster.toml",
        &[(&registrar, A), (&laptops[0], A), (&laptops[1], A)],
    );
    registrar.with_args(&["--roster", roster.to_str().unwrap(), "--registrar"]);
    with_office_users(&registrar);

    // Offline: no peer at all.
    let mut mine: Vec<Vec<String>> = Vec::new();
    for (i, laptop) in laptops.iter_mut().enumerate() {
        with_office_users(laptop);
        laptop.start();
        let mut docs = Vec::new();
        for k in 1..=3 {
            let (doc, answer) = draft_and_number(laptop, &format!("Quyết định {k} của máy {i}"));
            assert_eq!(answer["state"], "awaiting_number", "{answer}");
            assert_eq!(answer["number"], Value::Null);
            assert_eq!(answer["number_request"]["by"], "vanthu");
            // Waiting for the number, the document takes no further step.
            let r = laptop.try_action(&doc, &json!({ "action": "org_sign" }));
            assert_eq!(r.status, 409, "{}", r.body);
            assert!(
                r.body["error"]
                    .as_str()
                    .unwrap()
                    .contains("awaiting its number")
            );
            docs.push(doc);
        }
        laptop.stop();
        mine.push(docs);
    }

    // Back in the office, next to the registrar.
    registrar.start();
    let office = registrar.addr();
    for laptop in laptops.iter_mut() {
        laptop.with_args(&["--peer", &office]);
        laptop.start();
    }
    let all: Vec<String> = mine.concat();
    registrar.act_as(Some("vanthu"));
    wait_for("the registrar to number all six", SETTLE, || {
        all.iter()
            .all(|d| registrar.stored_ids().contains(d) && number_of(&registrar, d).is_some())
            .then_some(())
    });
    let numbers: Vec<u64> = all
        .iter()
        .map(|d| number_of(&registrar, d).unwrap())
        .collect();
    let distinct: BTreeSet<u64> = numbers.iter().copied().collect();
    assert_eq!(
        distinct,
        (1..=6).collect::<BTreeSet<u64>>(),
        "six distinct consecutive numbers: {numbers:?}"
    );
    // Each laptop sees its documents numbered as the registrar numbered them.
    for (laptop, docs) in laptops.iter_mut().zip(&mine) {
        laptop.act_as(Some("vanthu"));
        for doc in docs {
            let expected = number_of(&registrar, doc).unwrap();
            let d = wait_for(
                &format!("{doc} numbered on {}", laptop.name),
                SETTLE,
                || {
                    let d = laptop.get(&format!("/api/v1/documents/{doc}"));
                    (d["state"] == "numbered").then_some(d)
                },
            );
            assert_eq!(d["registration"]["number"], expected);
            assert_eq!(d["number"], format!("{expected:02}"));
            assert_eq!(d["duplicates"], json!([]));
            let last = d["history"].as_array().unwrap().last().unwrap().clone();
            assert_eq!(last["action"], "assign_number");
            assert_eq!(last["node"], registrar.id.as_str());
        }
    }
    // The printed register lists the six, in order, without a duplicate.
    let year = registrar.get(&format!("/api/v1/documents/{}", all[0]))["registration"]["year"]
        .as_i64()
        .unwrap();
    let book = registrar.get(&format!("/api/v1/registers/outgoing/{year}"));
    let entries = book["entries"].as_array().unwrap();
    let printed: Vec<u64> = entries
        .iter()
        .map(|e| e["number"].as_u64().unwrap())
        .collect();
    assert_eq!(printed, [1, 2, 3, 4, 5, 6]);
    assert!(entries.iter().all(|e| e["duplicate"] == false));
    let csv = registrar
        .try_get(&format!("/api/v1/registers/outgoing/{year}?format=csv"))
        .unwrap();
    assert_eq!(csv.status, 200);
    let text = csv.body.as_str().unwrap();
    // With a byte order mark, so spreadsheets read it as UTF-8.
    assert!(
        text.starts_with("\u{feff}\"Số, ký hiệu văn bản\",Ngày tháng văn bản"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 7, "{text}");
    assert!(text.contains("06/QĐ-UBND"), "{text}");

    // A closed year gives no more numbers, and says so.
    let r = registrar
        .try_post(
            &format!("/api/v1/registers/outgoing/{year}/close"),
            &json!({}),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["last_number"], 6);
    let (doc, _) = {
        registrar.act_as(Some("chutich"));
        let doc = id(&registrar.post(
            "/api/v1/documents",
            &json!({ "type": "Quyết định", "notation": "QĐ-UBND", "subject": "Muộn" }),
        ));
        for step in ["submit", "approve", "sign"] {
            registrar.action(&doc, step, json!({}));
        }
        (doc, ())
    };
    registrar.act_as(Some("vanthu"));
    let r = registrar.try_action(&doc, &json!({ "action": "number", "year": year }));
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["error"].as_str().unwrap().contains("is closed"),
        "{}",
        r.body
    );
    assert_eq!(
        registrar.get(&format!("/api/v1/documents/{doc}"))["state"],
        "signed"
    );
}

#[test]
fn two_registrars_giving_one_number_twice_show_the_duplicate_on_both() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let mut x = Process::init(dir, "node-X", Kind::Node, A);
    let mut y = Process::init(dir, "node-Y", Kind::Node, A);
    let roster = roster(dir, "roster.toml", &[(&x, A), (&y, A)]);
    x.with_args(&["--roster", roster.to_str().unwrap(), "--registrar"]);
    y.with_args(&["--registrar"]);
    with_office_users(&x);
    with_office_users(&y);
    x.start();
    y.start();
    let (dx, nx) = draft_and_number(&mut x, "Quyết định trên máy X");
    let (dy, ny) = draft_and_number(&mut y, "Quyết định trên máy Y");
    assert_eq!(nx["number"], "01");
    assert_eq!(ny["number"], "01");

    // They meet.
    y.stop();
    let xa = x.addr();
    y.with_args(&["--peer", &xa]);
    y.start();
    y.act_as(Some("vanthu"));
    for (node, mine, other) in [(&x, &dx, &dy), (&y, &dy, &dx)] {
        let d = wait_for(
            &format!("the duplicate flagged on {}", node.name),
            SETTLE,
            || {
                let d = node.get(&format!("/api/v1/documents/{mine}"));
                (d["duplicates"] == json!([other])).then_some(d)
            },
        );
        // Never merged: each keeps its own number, and the other shows the same flag.
        assert_eq!(d["number"], "01");
        let o = node.get(&format!("/api/v1/documents/{other}"));
        assert_eq!(o["number"], "01");
        assert_eq!(o["duplicates"], json!([mine]));
        let year = d["registration"]["year"].as_i64().unwrap();
        let book = node.get(&format!("/api/v1/registers/outgoing/{year}"));
        let entries = book["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 2, "{book}");
        assert!(entries.iter().all(|e| e["duplicate"] == true), "{book}");
        let html = node
            .try_get(&format!("/api/v1/registers/outgoing/{year}?format=html"))
            .unwrap();
        let html = html.body.as_str().unwrap().to_string();
        assert_eq!(html.matches("TRÙNG SỐ").count(), 2, "{html}");
        assert_eq!(html.matches("class=\"dup\"").count(), 2);
    }
}
