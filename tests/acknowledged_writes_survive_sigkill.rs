//! Node A is killed with SIGKILL in the middle of a burst of edits and new documents.
//! After a restart, every write whose HTTP call returned success is present on A, and
//! after sync on B.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use scenario::{Acknowledged, ThreeSites, UNIT_B, wait_for, write_burst};
use serde_json::json;

#[test]
fn every_acknowledged_write_survives_sigkill_and_reaches_the_other_node() {
    let mut sites = ThreeSites::new();
    sites.start_all();
    let doc = sites.a.post(
        "/api/v1/documents",
        &json!({ "subject": "Sổ ghi chép", "body": "", "audience": [UNIT_B] }),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();

    let mut all = Acknowledged::default();
    // Kill at a different moment in each round: 0.4 s, 0.9 s, 1.4 s into the burst.
    for round in 0..3 {
        let (tx, rx) = mpsc::channel();
        let http = sites.a.http;
        let d = doc.clone();
        let worker = std::thread::spawn(move || {
            tx.send(()).unwrap();
            write_burst(http, &d, &round.to_string(), UNIT_B, || false)
        });
        rx.recv().unwrap();
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(400 + 500 * round as u64));
        sites.a.kill();
        let acked = worker.join().unwrap();
        assert!(
            !acked.tokens.is_empty(),
            "round {round}: no edit was acknowledged in {:?}",
            started.elapsed()
        );
        all.extend(acked);

        sites.a.start();
        let body = sites.a.get(&format!("/api/v1/documents/{doc}"))["body"]
            .as_str()
            .unwrap()
            .to_string();
        for t in &all.tokens {
            assert!(body.contains(t.as_str()), "acknowledged edit {t} lost on A");
        }
        for id in &all.created {
            sites.a.get(&format!("/api/v1/documents/{id}"));
        }
    }
    eprintln!(
        "{} edits and {} new documents acknowledged across 3 kills",
        all.tokens.len(),
        all.created.len()
    );

    wait_for(
        "B to hold every acknowledged write",
        Duration::from_secs(60),
        || all.all_on(&sites.b, &doc).then_some(()),
    );
    assert_eq!(
        sites.a.get(&format!("/api/v1/documents/{doc}")),
        sites.b.get(&format!("/api/v1/documents/{doc}"))
    );
}
