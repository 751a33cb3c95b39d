//! The relay is killed with SIGKILL and restarted every couple of seconds while node A
//! keeps editing a document and creating new ones. Afterwards every acknowledged write is
//! on A and on B, and every document loads on A, B and the relay.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use scenario::{ThreeSites, UNIT_B, wait_for, write_burst};
use serde_json::json;

const KILLS: usize = 5;

#[test]
fn every_acknowledged_edit_arrives_although_the_relay_keeps_dying() {
    let mut sites = ThreeSites::new();
    sites.start_all();
    let doc = sites.a.post(
        "/api/v1/documents",
        &json!({ "subject": "Nhật ký trực bão", "body": "", "audience": [UNIT_B] }),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (http, doc, stop) = (sites.a.http, doc.clone(), stop.clone());
        std::thread::spawn(move || {
            write_burst(http, &doc, "A", UNIT_B, || stop.load(Ordering::Relaxed))
        })
    };
    for kill in 0..KILLS {
        // Between one and a half and two and a half seconds of life each time.
        std::thread::sleep(Duration::from_millis(1500 + 250 * (kill as u64 % 5)));
        sites.r.kill();
        std::thread::sleep(Duration::from_millis(300));
        sites.r.start();
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let acked = writer.join().expect("writer");
    assert!(
        !acked.tokens.is_empty() && !acked.created.is_empty(),
        "nothing was acknowledged: {acked:?}"
    );
    eprintln!(
        "{} edits and {} new documents acknowledged across {KILLS} relay kills",
        acked.tokens.len(),
        acked.created.len()
    );

    assert!(acked.all_on(&sites.a, &doc), "A lost an acknowledged write");
    wait_for(
        "B to hold every acknowledged write",
        Duration::from_secs(90),
        || acked.all_on(&sites.b, &doc).then_some(()),
    );
    for id in acked.created.iter().chain([&doc]) {
        let path = format!("/api/v1/documents/{id}");
        let on_a = sites.a.get(&path);
        wait_for(
            &format!("{id} to settle on B"),
            Duration::from_secs(30),
            || (sites.b.get(&path)["heads"] == on_a["heads"]).then_some(()),
        );
        assert_eq!(sites.r.get(&path)["heads"], on_a["heads"]);
    }
}
