//! Crash testing with real processes: SIGKILL at pseudo-random moments during local
//! edits that force compaction, during an import running beside the server, and during
//! sync, round after round; some rounds also leave a torn write (a partial, never
//! committed frame) at the end of SQLite's log. After every kill the store opens, every
//! write that was acknowledged (an HTTP success, an "imported" line) is there, every
//! document loads, and sync resumes.
//!
//! The moments follow from a seed, printed at the end; `CABINET_CRASH_SEED=S` replays
//! one, `CABINET_CRASH_ROUNDS=N` runs more rounds.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use scenario::{Acknowledged, Kind, Process, binary, roster, shared_data, wait_for, write_burst};
use serde_json::json;

const UNIT_A: &str = "18562";
const UNIT_B: &str = "18568";

/// A small deterministic generator (xorshift), enough to spread kill moments.
struct Moments(u64);

impl Moments {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Appends bytes that look like the start of a log frame that never finished.
fn tear_the_log(node: &Process, moments: &mut Moments) -> bool {
    let wal = node.data.join("store.db-wal");
    let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(&wal) else {
        return false;
    };
    let junk: Vec<u8> = (0..24 + moments.next(4000))
        .map(|_| moments.next(256) as u8)
        .collect();
    file.write_all(&junk).expect("torn bytes written");
    true
}

/// Inserts 2,000-character paragraphs at the start of `doc` until the node stops
/// answering; returns the marker of each acknowledged one.
fn paragraph_burst(http: std::net::SocketAddr, doc: &str, round: u64) -> Vec<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut acked = Vec::new();
    for i in 0.. {
        let marker = format!("[đoạn {round}.{i}]");
        let text = format!(
            "{marker} {}\n",
            "Tình hình mưa lũ trên địa bàn xã. ".repeat(60)
        );
        let r = agent
            .patch(&format!("http://{http}/api/v1/documents/{doc}"))
            .send_json(json!({ "body_splice": { "pos": 0, "delete": 0, "insert": text } }));
        match r {
            Ok(resp) if resp.status() == 200 => acked.push(marker),
            Ok(resp) => panic!("paragraph refused with {}", resp.status()),
            Err(_) => return acked,
        }
    }
    acked
}

/// Every document a node lists loads on its own.
fn every_document_loads(node: &Process) -> usize {
    let docs = node.documents();
    for d in &docs {
        let id = d["id"].as_str().expect("id");
        let r = node
            .try_get(&format!("/api/v1/documents/{id}"))
            .expect("answers");
        assert_eq!(
            r.status, 200,
            "{id} does not load on {}: {}",
            node.name, r.body
        );
    }
    docs.len()
}

#[test]
fn kills_at_random_points_lose_nothing_acknowledged() {
    let seed = env_u64("CABINET_CRASH_SEED").unwrap_or(0x0c0f_fee5);
    let rounds = env_u64("CABINET_CRASH_ROUNDS").unwrap_or(9);
    let mut moments = Moments(seed | 1);

    let root = tempfile::tempdir().unwrap();
    let mut a = Process::init(root.path(), "node-A", Kind::Node, UNIT_A);
    let mut b = Process::init(root.path(), "node-B", Kind::Node, UNIT_B);
    let roster = roster(root.path(), "roster.toml", &[(&b, UNIT_B)]);
    a.with_args(&["--roster", roster.to_str().unwrap()]);
    let a_addr = a.addr();
    b.with_args(&["--peer", &a_addr]);
    a.start();
    b.start();

    let doc = a.post(
        "/api/v1/documents",
        &json!({ "subject": "Biên bản họp", "body": "", "audience": [UNIT_B] }),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Paragraphs of 2,000 characters go into this one: its changes outgrow its snapshot
    // every few edits, so kills land around compactions.
    let long = a.post(
        "/api/v1/documents",
        &json!({ "subject": "Báo cáo tổng hợp", "body": "", "audience": [UNIT_B] }),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut paragraphs: Vec<String> = Vec::new();
    let mut files: Vec<String> = std::fs::read_dir(shared_data().join("documents"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    files.sort();

    let mut acked = Acknowledged::default();
    let mut imported: Vec<String> = Vec::new();
    let (mut kills, mut torn) = (0, 0);
    for round in 0..rounds {
        match round % 3 {
            // Edits on A, killed mid-burst.
            0 => {
                let http = a.http;
                let d = doc.clone();
                let label = format!("r{round}");
                let writer =
                    std::thread::spawn(move || write_burst(http, &d, &label, UNIT_B, || false));
                let l = long.clone();
                let compactor = std::thread::spawn(move || paragraph_burst(http, &l, round));
                std::thread::sleep(Duration::from_millis(200 + moments.next(1500)));
                a.kill();
                acked.extend(writer.join().expect("writer"));
                paragraphs.extend(compactor.join().expect("paragraph writer"));
                kills += 1;
                if moments.next(2) == 0 && tear_the_log(&a, &mut moments) {
                    torn += 1;
                }
                a.start();
            }
            // An import beside the running node, killed part way.
            1 => {
                let mut child = Command::new(binary("cabinet-node"))
                    .arg("--data")
                    .arg(&a.data)
                    .args(["import", "--audience", UNIT_B])
                    .args(&files)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("import starts");
                let stdout = child.stdout.take().expect("piped");
                let reader = std::thread::spawn(move || {
                    BufReader::new(stdout)
                        .lines()
                        .map_while(Result::ok)
                        .filter_map(|l| {
                            let (_, rest) = l.split_once(" as ")?;
                            rest.split_whitespace().next().map(str::to_string)
                        })
                        .collect::<Vec<String>>()
                });
                std::thread::sleep(Duration::from_millis(50 + moments.next(800)));
                let _ = child.kill();
                let _ = child.wait();
                imported.extend(reader.join().expect("reader"));
                kills += 1;
            }
            // B killed while it receives what A imported and edited.
            _ => {
                b.kill();
                b.start();
                std::thread::sleep(Duration::from_millis(100 + moments.next(1500)));
                b.kill();
                kills += 1;
                if moments.next(2) == 0 && tear_the_log(&b, &mut moments) {
                    torn += 1;
                }
                b.start();
            }
        }

        // After each kill: A opens and holds every acknowledged write.
        assert!(
            acked.all_on(&a, &doc),
            "round {round}: A lost an acknowledged edit"
        );
        let text = a.get(&format!("/api/v1/documents/{long}"))["body"]
            .as_str()
            .unwrap()
            .to_string();
        for p in &paragraphs {
            assert!(
                text.contains(p.as_str()),
                "round {round}: A lost paragraph {p}"
            );
        }
        for id in &imported {
            let r = a
                .try_get(&format!("/api/v1/documents/{id}"))
                .expect("answers");
            assert_eq!(r.status, 200, "round {round}: imported {id} lost on A");
        }
    }

    // Sync resumes: B ends with everything A acknowledged, and every document loads.
    wait_for("B to catch up", Duration::from_secs(120), || {
        let all = acked.all_on(&b, &doc)
            && imported.iter().all(|id| {
                b.try_get(&format!("/api/v1/documents/{id}"))
                    .is_ok_and(|r| r.status == 200)
            });
        all.then_some(())
    });
    let on_a = every_document_loads(&a);
    let on_b = every_document_loads(&b);
    wait_for(
        "A and B to list the same documents",
        Duration::from_secs(60),
        || (b.documents().len() == on_a).then_some(()),
    );
    assert!(on_b <= on_a);
    let path = format!("/api/v1/documents/{doc}");
    wait_for(
        "the edited document to settle",
        Duration::from_secs(60),
        || (a.get(&path)["heads"] == b.get(&path)["heads"]).then_some(()),
    );
    let _ = writeln!(
        std::io::stderr(),
        "crash test (seed {seed}): {kills} SIGKILLs over {rounds} rounds, {torn} torn log \
         writes; {} acknowledged edits, {} paragraphs, {} new documents and {} imports all \
         kept",
        acked.tokens.len(),
        paragraphs.len(),
        acked.created.len(),
        imported.len()
    );
}
