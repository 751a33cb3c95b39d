//! With no relay and no `--peer`, two neighbouring communes on one LAN find each other
//! by mDNS and sync directly; a third node on the LAN that the roster does not list is
//! never dialled and never admitted. The test runs in a network namespace of its own,
//! whose loopback carries multicast, so nothing it announces leaves the machine.

use std::process::Command;
use std::time::Duration;

use scenario::{Kind, Process, roster, wait_for};
use serde_json::json;

const TEST: &str = "neighbouring_communes_find_each_other_with_no_uplink";
const INSIDE: &str = "CABINET_TEST_IN_NETNS";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn neighbouring_communes_find_each_other_with_no_uplink() {
    if std::env::var_os(INSIDE).is_none() {
        // Run this same test again inside a new network namespace.
        let out = Command::new("unshare")
            .args(["--net", "--"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads", "1"])
            .env(INSIDE, "1")
            .output()
            .expect("unshare runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the test inside a network namespace failed (it needs `unshare --net`, as \
             root):\n{stdout}\n{stderr}"
        );
        return;
    }
    ip(&["link", "set", "lo", "up"]);
    ip(&["link", "set", "lo", "multicast", "on"]);
    ip(&["route", "add", "224.0.0.0/4", "dev", "lo"]);

    let root = tempfile::tempdir().unwrap();
    let mut a = Process::init(root.path(), "A", Kind::Node, "18562");
    let mut b = Process::init(root.path(), "B", Kind::Node, "18568");
    let mut stranger = Process::init(root.path(), "stranger", Kind::Node, "18409");
    let listed = roster(root.path(), "roster.toml", &[(&a, "18562"), (&b, "18568")]);
    let listed = listed.to_str().unwrap().to_string();
    for p in [&mut a, &mut b, &mut stranger] {
        p.with_args(&["--roster", &listed]).with_mdns();
    }
    a.start();
    b.start();
    stranger.start();

    let for_b = a.post(
        "/api/v1/documents",
        &json!({ "subject": "Thông báo lịch họp liên xã", "audience": ["18568"] }),
    );
    let id = for_b["id"].as_str().unwrap().to_string();
    wait_for(
        "B to receive A's notice over the LAN",
        Duration::from_secs(60),
        || b.stored_ids().contains(&id).then_some(()),
    );
    let status = a.get("/api/v1/status");
    let peers = status["peers"].as_array().unwrap();
    assert!(
        peers
            .iter()
            .any(|p| p["id"] == b.id.as_str() && p["unit"] == "18568"),
        "A does not list B as a peer: {status}"
    );

    // The stranger writes to both, and is seen on the LAN by both; neither takes it.
    let from_stranger = stranger.post(
        "/api/v1/documents",
        &json!({ "subject": "Tin giả", "audience": ["18562", "18568"] }),
    );
    let stranger_id = from_stranger["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(8));
    for node in [&a, &b] {
        assert!(!node.stored_ids().contains(&stranger_id));
        let status = node.get("/api/v1/status");
        assert!(
            !status["peers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["id"] == stranger.id.as_str() && p["connected"] == true),
            "{} holds a session with the stranger: {status}",
            node.name
        );
    }
    assert_eq!(stranger.stored_ids().len(), 1);
}
