//! A relay tree of Hà Tĩnh: the province relay P (42) above the cluster relays of the
//! former districts Thạch Hà (42-445) and Can Lộc (42-443), each with two commune nodes.
//! P signs the roster; the cluster relays and the communes trust P's key and receive the
//! roster through sync. Records with every kind of audience end up on exactly the stores
//! the rules place them on, read from each store file; two rogue nodes learn and write
//! nothing; a revocation and an admission published at P take effect at the cluster
//! relay; a commune whose store is wiped gets back all it may see, and sync goes quiet.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use scenario::{Kind, Process, roster_text, wait_for};
use serde_json::{Value, json};

const PROVINCE: &str = "42";
const THACH_HA: &str = "42-445";
const CAN_LOC: &str = "42-443";
/// Xã Thạch Hà and Xã Lộc Hà (former Huyện Thạch Hà); Xã Can Lộc and Xã Tùng Lộc
/// (former Huyện Can Lộc); Xã Hồng Lộc (Thạch Hà) joins later; Xã Trường Lưu (Can Lộc) is
/// the unit a rogue is listed for.
const A: &str = "18562";
const B: &str = "18568";
const C: &str = "18406";
const D: &str = "18418";
const E: &str = "18409";
const TRUONG_LUU: &str = "18436";

const SETTLE: Duration = Duration::from_secs(60);

fn publish(p: &Process, root: &Path, name: &str, text: &str) {
    let file = root.join(name);
    std::fs::write(&file, text).unwrap();
    let out = p.run(&["roster", "publish", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "roster publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn roster_version(p: &Process) -> u64 {
    p.get("/api/v1/status")["rosters"]
        .as_array()
        .and_then(|r| r.first())
        .and_then(|r| r["version"].as_u64())
        .unwrap_or(0)
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

fn create(node: &Process, subject: &str, audience: &[&str], extra: Value) -> String {
    let mut body = json!({
        "type": "Công văn",
        "subject": subject,
        "body": format!("Nội dung: {subject}."),
        "audience": audience,
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    id(&node.post("/api/v1/documents", &body))
}

fn note(node: &Process, doc: &str, text: &str, visibility: &str) -> String {
    id(&node.post(
        &format!("/api/v1/documents/{doc}/annotations"),
        &json!({ "text": text, "visibility": visibility }),
    ))
}

/// Waits until every record is on each store that should hold it, then lets sync run
/// on a little and checks that each record is on those stores and no other.
fn check_placement(everyone: &[&Process], expected: &BTreeMap<String, (&str, Vec<&str>)>) {
    let holders = |rec: &str| -> BTreeSet<String> {
        everyone
            .iter()
            .filter(|p| p.stored_ids().contains(rec))
            .map(|p| p.name.clone())
            .collect()
    };
    let want =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| s.to_string()).collect() };
    for (rec, (what, names)) in expected {
        wait_for(&format!("{what} to reach {names:?}"), SETTLE, || {
            holders(rec).is_superset(&want(names)).then_some(())
        });
    }
    std::thread::sleep(Duration::from_secs(4));
    for (rec, (what, names)) in expected {
        assert_eq!(
            holders(rec),
            want(names),
            "{what} ({rec}) is on the wrong stores"
        );
    }
}

#[test]
fn every_record_lives_exactly_where_its_audience_places_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let mut p = Process::init(dir, "P", Kind::Relay, PROVINCE);
    let mut c1 = Process::init(dir, "C1", Kind::Relay, THACH_HA);
    let mut c2 = Process::init(dir, "C2", Kind::Relay, CAN_LOC);
    let mut a = Process::init(dir, "A", Kind::Node, A);
    let mut b = Process::init(dir, "B", Kind::Node, B);
    let mut c = Process::init(dir, "C", Kind::Node, C);
    let mut d = Process::init(dir, "D", Kind::Node, D);
    // A valid key on no roster, and a key listed for Trường Lưu that poses as Thạch Hà.
    let mut stranger = Process::init(dir, "stranger", Kind::Node, B);
    let mut impostor = Process::init(dir, "impostor", Kind::Node, A);

    let v1 = roster_text(
        &[
            (&p, PROVINCE),
            (&c1, THACH_HA),
            (&c2, CAN_LOC),
            (&a, A),
            (&b, B),
            (&c, C),
            (&d, D),
            (&impostor, TRUONG_LUU),
        ],
        &[],
    );
    publish(&p, dir, "roster-v1.toml", &v1);

    let trust = p.id.clone();
    let (p_addr, c1_addr, c2_addr) = (p.addr(), c1.addr(), c2.addr());
    for relay in [&mut c1, &mut c2] {
        relay.with_args(&["--upstream", &p_addr, "--roster-key", &trust]);
    }
    for (node, up) in [
        (&mut a, &c1_addr),
        (&mut b, &c1_addr),
        (&mut c, &c2_addr),
        (&mut d, &c2_addr),
    ] {
        node.with_args(&["--relay", up, "--roster-key", &trust]);
    }
    stranger.with_args(&["--relay", &c1_addr, "--relay", &p_addr]);
    impostor.with_args(&["--relay", &c1_addr, "--roster-key", &trust]);

    p.start();
    c1.start();
    c2.start();
    let v1_version = roster_version(&p);
    assert!(v1_version > 0, "P holds no roster of its own");
    for relay in [&c1, &c2] {
        wait_for(
            &format!("{} to receive P's roster", relay.name),
            SETTLE,
            || (roster_version(relay) == v1_version).then_some(()),
        );
    }
    for node in [&mut a, &mut b, &mut c, &mut d, &mut stranger, &mut impostor] {
        node.start();
    }

    let mut expected: BTreeMap<String, (&str, Vec<&str>)> = BTreeMap::new();
    let local = create(&a, "Lịch trực cơ quan", &[], json!({}));
    expected.insert(local, ("a commune-only document", vec!["A"]));
    let cluster = create(&a, "Báo cáo cụm Thạch Hà", &[THACH_HA], json!({}));
    expected.insert(cluster, ("a report for the cluster", vec!["A", "C1"]));
    let province = create(&a, "Báo cáo tỉnh", &[PROVINCE], json!({}));
    expected.insert(
        province,
        ("a report for the province", vec!["A", "C1", "P"]),
    );
    let named = create(&a, "Công văn gửi xã Tùng Lộc", &[D], json!({}));
    expected.insert(
        named.clone(),
        ("a dispatch to Tùng Lộc", vec!["A", "C1", "P", "C2", "D"]),
    );
    let private = note(&a, &named, "Ghi chú riêng của chủ tịch", "private");
    expected.insert(private, ("a private annotation", vec!["A"]));
    let shared = note(&a, &named, "Đề nghị phối hợp", "audience");
    expected.insert(
        shared,
        (
            "an annotation for the dispatch's audience",
            vec!["A", "C1", "P", "C2", "D"],
        ),
    );
    // A secret document is not addressed beyond its unit: the API says so. (That a
    // secret record with a wider audience still stays home is the policy's and the
    // simulation's to show.)
    let refused = a
        .try_post(
            "/api/v1/documents",
            &json!({ "subject": "Phương án", "secrecy": "Mật", "audience": [PROVINCE] }),
        )
        .unwrap();
    assert_eq!(refused.status, 400, "{}", refused.body);
    let secret = create(&a, "Phương án bảo vệ", &[], json!({ "secrecy": "Mật" }));
    let on_secret = note(&a, &secret, "Ý kiến về phương án", "audience");
    expected.insert(secret, ("a secret document", vec!["A"]));
    expected.insert(
        on_secret,
        ("an annotation on the secret document", vec!["A"]),
    );
    let reply = create(&d, "Tùng Lộc trả lời xã Lộc Hà", &[B], json!({}));
    expected.insert(
        reply.clone(),
        (
            "Tùng Lộc's reply to Lộc Hà",
            vec!["D", "C2", "P", "C1", "B"],
        ),
    );
    wait_for("the reply to reach B", SETTLE, || {
        b.stored_ids().contains(&reply).then_some(())
    });
    let b_note = note(&b, &reply, "Lộc Hà đã nhận", "audience");
    expected.insert(
        b_note,
        (
            "Lộc Hà's note on the reply",
            vec!["B", "C1", "P", "C2", "D"],
        ),
    );
    let neighbours = create(&b, "Lộc Hà gửi Thạch Hà", &[A], json!({}));
    expected.insert(
        neighbours,
        (
            "a letter between two communes of a cluster",
            vec!["B", "C1", "A"],
        ),
    );
    let c_own = create(&c, "Can Lộc nội bộ", &[], json!({}));
    expected.insert(c_own, ("Can Lộc's own record", vec!["C"]));
    let from_stranger = create(&stranger, "Tin giả", &[THACH_HA, PROVINCE], json!({}));
    expected.insert(from_stranger, ("the stranger's record", vec!["stranger"]));
    let from_impostor = create(&impostor, "Văn bản mạo danh", &[PROVINCE, B], json!({}));
    expected.insert(from_impostor, ("the impostor's record", vec!["impostor"]));

    let everyone = [&p, &c1, &c2, &a, &b, &c, &d, &stranger, &impostor];
    check_placement(&everyone, &expected);
    // The rogues hold their own record and nothing else.
    assert_eq!(stranger.stored_ids().len(), 1);
    assert_eq!(impostor.stored_ids().len(), 1);

    // P admits Hồng Lộc and revokes Lộc Hà. Nobody edits a file at C1.
    let mut e = Process::init(dir, "E", Kind::Node, E);
    // Version 2: version 1's members and Hồng Lộc, with Lộc Hà revoked.
    let v2 = format!(
        "{}{v1}{}",
        roster_text(&[], &[&b]),
        roster_text(&[(&e, E)], &[])
    );
    publish(&p, dir, "roster-v2.toml", &v2);
    let v2_version = wait_for("P to take its new roster", SETTLE, || {
        let v = roster_version(&p);
        (v > v1_version).then_some(v)
    });
    for relay in [&c1, &c2] {
        wait_for(
            &format!("{} to receive roster v2", relay.name),
            SETTLE,
            || (roster_version(relay) == v2_version).then_some(()),
        );
    }
    e.with_args(&["--relay", &c1_addr, "--roster-key", &trust]);
    e.start();
    let for_b_and_e = create(&a, "Thông báo cho Lộc Hà và Hồng Lộc", &[B, E], json!({}));
    expected.insert(
        for_b_and_e,
        ("a notice after B's revocation", vec!["A", "C1", "E"]),
    );
    let from_revoked = create(&b, "Gửi sau khi bị thu hồi", &[A], json!({}));
    expected.insert(from_revoked, ("a letter from revoked B", vec!["B"]));
    let everyone = [&p, &c1, &c2, &a, &b, &c, &d, &stranger, &impostor, &e];
    check_placement(&everyone, &expected);
    let status = c1.get("/api/v1/status");
    let b_on_c1 = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|peer| peer["id"] == b.id.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(b_on_c1["revoked"], true, "{status}");
    assert_eq!(b_on_c1["connected"], false, "{status}");

    // A draft kept in the commune is shared up with the province, then taken back: the
    // widening reaches C1 and P on the next sync; after the narrowing, A's later edits
    // stay on A, while what P and C1 already received stays with them.
    let draft = create(&a, "Dự thảo báo cáo quý", &[], json!({}));
    expected.insert(draft.clone(), ("a draft kept in the commune", vec!["A"]));
    let everyone = [&p, &c1, &c2, &a, &b, &c, &d, &stranger, &impostor, &e];
    check_placement(&everyone, &expected);
    let path = format!("/api/v1/documents/{draft}");
    let widened = a.patch(&path, &json!({ "audience": [A, PROVINCE] }));
    expected.insert(
        draft.clone(),
        ("the draft shared with the province", vec!["A", "C1", "P"]),
    );
    check_placement(&everyone, &expected);
    a.patch(&path, &json!({ "audience": [A] }));
    let edited = a.patch(
        &path,
        &json!({ "subject": "Dự thảo báo cáo quý (bản sửa nội bộ)" }),
    );
    std::thread::sleep(Duration::from_secs(4));
    for relay in [&p, &c1] {
        let held = relay.get(&path);
        assert_eq!(held["heads"], widened["heads"], "{} has {held}", relay.name);
        assert_ne!(held["heads"], edited["heads"]);
    }

    // Tùng Lộc's disk is replaced: same key, empty store.
    d.stop();
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        let _ = std::fs::remove_file(d.data.join(f));
    }
    let out = d.run(&["init", "--unit", D]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.stored_ids().is_empty());
    d.start();
    let everyone = [&p, &c1, &c2, &a, &b, &c, &d, &stranger, &impostor, &e];
    check_placement(&everyone, &expected);
    // And then nothing moves: no record bounces between D and C2.
    let traffic = |node: &Process| -> u64 {
        node.get("/api/v1/status")["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["bytes_in"].as_u64().unwrap_or(0) + p["bytes_out"].as_u64().unwrap_or(0))
            .sum()
    };
    let before = traffic(&d);
    std::thread::sleep(Duration::from_secs(5));
    let after = traffic(&d);
    // Keep-alives are QUIC's, below the frames counted here; a Hello or two from a
    // reconnect is all that may pass.
    assert!(
        after - before < 1024,
        "D kept exchanging frames after it caught up: {before} → {after} bytes"
    );
}
