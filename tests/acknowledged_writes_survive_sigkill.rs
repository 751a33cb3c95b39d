//! Node A is killed with SIGKILL in the middle of a burst of edits and new documents.
//! After a restart, every write whose HTTP call returned success is present on A, and
//! after sync on B.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use scenario::{ThreeSites, UNIT_B, wait_for};
use serde_json::json;

/// What the burst saw acknowledged before the node died.
#[derive(Default)]
struct Acknowledged {
    tokens: Vec<String>,
    created: Vec<String>,
}

/// Edits `doc` and creates documents as fast as the node answers, until it stops
/// answering; reports what it was told had committed.
fn burst(http: std::net::SocketAddr, doc: String, round: usize) -> Acknowledged {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut acked = Acknowledged::default();
    for i in 0.. {
        let token = format!("⟨{round}.{i}⟩");
        let r = agent
            .patch(&format!("http://{http}/api/v1/documents/{doc}"))
            .send_json(json!({ "body_splice": { "pos": 0, "delete": 0, "insert": token } }));
        match r {
            Ok(resp) if resp.status() == 200 => acked.tokens.push(token),
            Ok(resp) => panic!("edit refused with {}", resp.status()),
            Err(_) => break,
        }
        if i % 4 == 0 {
            let r = agent
                .post(&format!("http://{http}/api/v1/documents"))
                .send_json(
                    json!({ "subject": format!("Văn bản {round}.{i}"), "audience": [UNIT_B] }),
                );
            match r {
                Ok(mut resp) if resp.status() == 201 => {
                    let v: serde_json::Value = resp.body_mut().read_json().unwrap();
                    acked.created.push(v["id"].as_str().unwrap().to_string());
                }
                Ok(resp) => panic!("create refused with {}", resp.status()),
                Err(_) => break,
            }
        }
    }
    acked
}

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
            burst(http, d, round)
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
        all.tokens.extend(acked.tokens);
        all.created.extend(acked.created);

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
        || {
            let body = sites.b.try_get(&format!("/api/v1/documents/{doc}")).ok()?;
            let body = body.body["body"].as_str()?.to_string();
            let all_edits = all.tokens.iter().all(|t| body.contains(t.as_str()));
            let all_docs = all.created.iter().all(|id| {
                sites
                    .b
                    .try_get(&format!("/api/v1/documents/{id}"))
                    .is_ok_and(|r| r.status == 200)
            });
            (all_edits && all_docs).then_some(())
        },
    );
    assert_eq!(
        sites.a.get(&format!("/api/v1/documents/{doc}")),
        sites.b.get(&format!("/api/v1/documents/{doc}"))
    );
}
