//! Node B, restarted while the relay is down, still lists every document it had. When the
//! relay comes back and B reconnects, its count never dips, not even for a moment, and
//! it downloads nothing again that it already holds.

use std::time::{Duration, Instant};

use scenario::{Process, ThreeSites, UNIT_B, wait_for};
use serde_json::{Value, json};

const DOCUMENTS: usize = 40;

/// B's view of its relay: bytes received from it since B started, and whether the
/// session is connected and has nothing left to exchange.
fn relay_peer(b: &Process, relay_id: &str) -> Option<Value> {
    let status = b.try_get("/api/v1/status").ok()?.body;
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["id"] == relay_id)
        .cloned()
}

fn settled(peer: &Value) -> bool {
    peer["connected"] == true && peer["pending_out"] == 0 && peer["pending_in"] == 0
}

#[test]
fn a_node_restarted_offline_lists_everything_and_refetches_nothing() {
    let mut sites = ThreeSites::new();
    sites.start_all();
    for i in 0..DOCUMENTS {
        sites.a.post(
            "/api/v1/documents",
            &json!({
                "subject": format!("Công văn số {i} về phòng chống lụt bão"),
                "body": "Kính gửi: Ủy ban nhân dân các xã.\n".repeat(20),
                "audience": [UNIT_B],
            }),
        );
    }
    let relay_id = sites.r.id.clone();
    wait_for(
        "B to receive every document",
        Duration::from_secs(60),
        || (sites.b.documents().len() == DOCUMENTS).then_some(()),
    );
    let first_sync = wait_for("B's session to settle", Duration::from_secs(30), || {
        relay_peer(&sites.b, &relay_id).filter(settled)
    });
    let first_bytes = first_sync["bytes_in"].as_u64().unwrap();

    sites.r.stop();
    sites.b.stop();
    sites.b.start();
    assert_eq!(
        sites.b.documents().len(),
        DOCUMENTS,
        "B offline after a restart"
    );

    let before = relay_peer(&sites.b, &relay_id).expect("B knows its relay");
    sites.r.start();
    // Until the session has caught up (its last sync moved on, pending counts are zero
    // and the bytes received stop changing), the count is read again and again.
    let started = Instant::now();
    let mut lowest = usize::MAX;
    let mut last_bytes = None;
    let mut steady = 0;
    let peer = loop {
        let listed = sites.b.documents().len();
        let counted = sites.b.get("/api/v1/status")["documents"].as_u64().unwrap() as usize;
        lowest = lowest.min(listed).min(counted);
        if let Some(p) = relay_peer(&sites.b, &relay_id)
            .filter(settled)
            .filter(|p| p["last_sync"] != before["last_sync"] && p["last_sync"].is_string())
        {
            let bytes = p["bytes_in"].as_u64();
            steady = if bytes == last_bytes { steady + 1 } else { 0 };
            last_bytes = bytes;
            if steady >= 5 {
                break p;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "B never settled with the relay"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        lowest, DOCUMENTS,
        "B's document count dipped during the reconnect"
    );
    let again = peer["bytes_in"].as_u64().unwrap();
    eprintln!("first sync: {first_bytes} bytes from the relay; reconnect: {again} bytes");
    assert!(
        again * 20 < first_bytes,
        "the reconnect received {again} bytes, against {first_bytes} for the first sync"
    );
}
