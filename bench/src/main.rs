//! `cabinet-bench`: measures what docs/benchmarks.md reports, and prints the numbers.
//!
//! `cabinet-bench trace` replays the automerge-perf editing trace (259,778 single-
//! character edits) into one document's body on node A, in batches, while A syncs to
//! node B over real iroh connections on loopback; it reports the time until B holds the
//! final text and the bytes of protocol frames that crossed. For comparison it does the
//! same with bare automerge in one process: apply, then sync two in-memory documents.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ROOT};
use clap::{Parser, Subcommand};
use sync_core::model::{self, DocId, DocumentPatch, Header, Kind};
use sync_core::net::{Net, NetConfig, PeerAddr, SharedStore};
use sync_core::policy::{Member, Role};
use sync_core::roster::Roster;
use sync_core::service;
use sync_core::store::Store;
use sync_core::units::UnitCode;

#[derive(Parser)]
#[command(
    name = "cabinet-bench",
    about = "Benchmarks that print Cabinet's figures"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay the real editing trace on node A and sync it to node B.
    Trace {
        /// The trace (gzip JSON in the editing-traces format).
        #[arg(long, default_value_os_t = default_trace())]
        file: PathBuf,
        /// Edits per stored change.
        #[arg(long, default_value_t = 5_000)]
        batch: usize,
        /// Runs; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

fn default_trace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/traces/automerge-paper.json.gz")
}

struct Trace {
    start: String,
    end: String,
    patches: Vec<(usize, usize, String)>,
}

fn load_trace(path: &PathBuf) -> anyhow::Result<Trace> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file).read_to_string(&mut text)?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let mut patches = Vec::new();
    for txn in v["txns"].as_array().context("txns")? {
        for p in txn["patches"].as_array().context("patches")? {
            patches.push((
                p[0].as_u64().context("pos")? as usize,
                p[1].as_u64().context("delete")? as usize,
                p[2].as_str().context("insert")?.to_string(),
            ));
        }
    }
    Ok(Trace {
        start: v["startContent"].as_str().unwrap_or("").to_string(),
        end: v["endContent"].as_str().context("endContent")?.to_string(),
        patches,
    })
}

/// Bare automerge in one process: apply in batches, then sync to an empty document.
fn raw(trace: &Trace, batch: usize) -> (Duration, Duration, u64) {
    let started = Instant::now();
    let mut doc = Automerge::new();
    let text = {
        let mut tx = doc.transaction();
        let text = tx.put_object(ROOT, "body", ObjType::Text).expect("text");
        tx.splice_text(&text, 0, 0, &trace.start).expect("start");
        tx.commit();
        text
    };
    for chunk in trace.patches.chunks(batch) {
        let mut tx = doc.transaction();
        for (pos, del, ins) in chunk {
            tx.splice_text(&text, *pos, *del as isize, ins)
                .expect("splice");
        }
        tx.commit();
    }
    let applied = started.elapsed();

    let started = Instant::now();
    let mut other = Automerge::new();
    let (mut s1, mut s2) = (sync::State::new(), sync::State::new());
    let mut bytes = 0u64;
    loop {
        let m1 = doc.generate_sync_message(&mut s1);
        if let Some(m) = &m1 {
            let enc = m.clone().encode();
            bytes += enc.len() as u64;
            other
                .receive_sync_message(&mut s2, sync::Message::decode(&enc).expect("decode"))
                .expect("receive");
        }
        let m2 = other.generate_sync_message(&mut s2);
        if let Some(m) = &m2 {
            let enc = m.clone().encode();
            bytes += enc.len() as u64;
            doc.receive_sync_message(&mut s1, sync::Message::decode(&enc).expect("decode"))
                .expect("receive");
        }
        if m1.is_none() && m2.is_none() {
            break;
        }
    }
    let synced = started.elapsed();
    use automerge::ReadDoc;
    let body = other.get(ROOT, "body").expect("get").expect("body").1;
    assert_eq!(other.text(&body).expect("text"), trace.end);
    (applied, synced, bytes)
}

struct CabinetRun {
    applied: Duration,
    until_on_b: Duration,
    bytes: u64,
}

fn member(unit: &str) -> Member {
    Member {
        unit: UnitCode::parse(unit).expect("known unit"),
        role: Role::Node,
    }
}

/// Two nodes on loopback: A applies the trace, B receives it.
async fn cabinet(trace: &Trace, batch: usize) -> anyhow::Result<CabinetRun> {
    let dir = tempfile::tempdir()?;
    let store_a = service::share(Store::create(&dir.path().join("a.db"), "18562", "A")?);
    let store_b = service::share(Store::create(&dir.path().join("b.db"), "18568", "B")?);
    let (key_a, key_b) = (iroh::SecretKey::generate(), iroh::SecretKey::generate());
    let roster = Roster::parse(&format!(
        "[[member]]\nid = \"{}\"\nunit = \"18562\"\nrole = \"node\"\n\
         [[member]]\nid = \"{}\"\nunit = \"18568\"\nrole = \"node\"\n",
        key_a.public(),
        key_b.public()
    ))
    .map_err(anyhow::Error::msg)?;
    let id_a = key_a.public();
    let net_a = Net::start(
        key_a,
        store_a.clone(),
        NetConfig {
            listen: "127.0.0.1:0".parse()?,
            me: member("18562"),
            dial: vec![],
            roster: roster.clone(),
            roster_keys: vec![],
        },
    )
    .await?;
    let addr_a = net_a.bound_sockets()[0];
    let net_b = Net::start(
        key_b,
        store_b.clone(),
        NetConfig {
            listen: "127.0.0.1:0".parse()?,
            me: member("18568"),
            dial: vec![(
                PeerAddr {
                    id: id_a,
                    addr: addr_a,
                },
                Role::Node,
            )],
            roster,
            roster_keys: vec![],
        },
    )
    .await?;

    let started = Instant::now();
    let id = DocId::new();
    let header = Header {
        kind: Kind::Document,
        unit: "18562".into(),
        audience: vec!["18562".into(), "18568".into()],
        created_by: "bench".into(),
        created_at: model::now_vietnam(),
        confidential: false,
    };
    let doc = model::create_document(
        &header,
        &DocumentPatch {
            body: Some(trace.start.clone()),
            ..Default::default()
        },
    )?;
    put(&store_a, &id, doc)?;
    for chunk in trace.patches.chunks(batch) {
        let store = store_a.clone();
        let chunk = chunk.to_vec();
        let id = id.clone();
        tokio::task::spawn_blocking(move || {
            service::lock(&store).modify(&id, |d| {
                model::splice_body_batch(d, chunk.iter().map(|(p, n, i)| (*p, *n, i.as_str())))
            })
        })
        .await??;
    }
    let applied = started.elapsed();

    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = {
            let mut b = service::lock(&store_b);
            match b.get(&id)? {
                Some(doc) => model::body_text(doc)? == trace.end,
                None => false,
            }
        };
        if done {
            break;
        }
        if Instant::now() > deadline {
            bail!("B never received the whole trace");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let until_on_b = started.elapsed();
    let peer = net_a
        .status()
        .into_iter()
        .find(|p| p.id == net_b.id().to_string())
        .context("A saw B")?;
    let bytes = peer.bytes_in + peer.bytes_out;
    net_b.shutdown().await;
    net_a.shutdown().await;
    Ok(CabinetRun {
        applied,
        until_on_b,
        bytes,
    })
}

fn put(store: &SharedStore, id: &DocId, doc: Automerge) -> anyhow::Result<()> {
    service::lock(store).put(id, doc, &[])?;
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Trace { file, batch, runs } => {
            let trace = load_trace(&file)?;
            println!(
                "trace: {} edits, final text {} characters, batches of {batch}, {runs} runs",
                trace.patches.len(),
                trace.end.chars().count()
            );
            let mut raw_total = Vec::new();
            let mut raw_bytes = 0;
            for _ in 0..runs {
                let (applied, synced, bytes) = raw(&trace, batch);
                raw_total.push(applied + synced);
                raw_bytes = bytes;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let mut applied = Vec::new();
            let mut total = Vec::new();
            let mut bytes = 0;
            for _ in 0..runs {
                let run = runtime.block_on(cabinet(&trace, batch))?;
                applied.push(run.applied);
                total.push(run.until_on_b);
                bytes = run.bytes;
            }
            let raw_median = median(raw_total);
            let cabinet_median = median(total);
            println!(
                "raw automerge, one process: apply + sync {:.2?}, {} sync bytes",
                raw_median, raw_bytes
            );
            println!(
                "cabinet, A→B over iroh loopback: applied and stored on A {:.2?}, whole text on B {:.2?}, {} frame bytes ({:.2}× raw time)",
                median(applied),
                cabinet_median,
                bytes,
                cabinet_median.as_secs_f64() / raw_median.as_secs_f64()
            );
        }
    }
    Ok(())
}
