//! `cabinet-bench`: measures what docs/benchmarks.md reports, and prints the numbers.
//!
//! `cabinet-bench trace` replays the automerge-perf editing trace (259,778 single-
//! character edits) into one document's body on node A, in batches, while A syncs to
//! node B over real iroh connections on loopback; it reports the time until B holds the
//! final text and the bytes of protocol frames that crossed. For comparison it does the
//! same with bare automerge in one process: apply, then sync two in-memory documents.
//!
//! `cabinet-bench reconnect` fills node A with 10,000 documents of about 5 KB (bodies
//! cut from the real documents in `data/documents`) shared with node B, and measures
//! over real iroh connections: the cold sync to an empty B; a reconnect after 10 of them
//! changed on A while B was away; B wiped (same key, empty store) and reconnecting; and
//! B re-created with the same records under a new epoch (a restore onto a new store),
//! which has no valid cursor and reconciles catalogs instead.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ROOT};
use clap::{Parser, Subcommand};
use sync_core::blobs::Blobs;
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
    /// Cold sync, reconnect after a few changes, wiped peer, re-created peer.
    Reconnect {
        #[arg(long, default_value_t = 10_000)]
        documents: usize,
        /// Documents changed on A while B is away.
        #[arg(long, default_value_t = 10)]
        changed: usize,
        /// Bytes of body per document.
        #[arg(long, default_value_t = 5_000)]
        body_bytes: usize,
        /// The real documents the bodies are cut from.
        #[arg(long, default_value_os_t = default_documents())]
        corpus: PathBuf,
        /// Runs; the median of each figure is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// One attachment A → B over iroh: throughput against the disk's, and what a resume
    /// after B stops half-way sends again.
    Attachment {
        /// Size of the file, MiB.
        #[arg(long, default_value_t = 200)]
        mib: u64,
        /// Runs; the median of each figure is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Search latency over the imported corpus (and over copies of it).
    Search {
        /// The real documents, imported as `cabinet-node import` does.
        #[arg(long, default_value_os_t = default_documents())]
        corpus: PathBuf,
        /// Copies of the corpus in the larger store (each copy is its own documents).
        #[arg(long, default_value_t = 300)]
        copies: usize,
        /// Times each query is run; the median and the 99th percentile are reported.
        #[arg(long, default_value_t = 200)]
        repeat: usize,
    },
}

fn default_documents() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/documents")
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
    let (a, b, roster) = two_nodes(dir.path())?;
    let net_a = start_net(&a, None, &roster).await?;
    let addr_a = PeerAddr {
        id: net_a.id(),
        addr: net_a.bound_sockets()[0],
    };
    let net_b = start_net(&b, Some(addr_a), &roster).await?;
    let (store_a, store_b) = (a.store, b.store);

    let started = Instant::now();
    let id = DocId::new();
    let doc = model::create_document(
        &shared_header(),
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

/// Bodies of about `bytes` bytes each, cut from the corpus in turn.
fn bodies(corpus: &PathBuf, bytes: usize) -> anyhow::Result<Vec<String>> {
    let mut texts = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(corpus)
        .with_context(|| format!("cannot read {}", corpus.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let text = std::fs::read_to_string(e.path())?;
        let mut start = 0;
        while start < text.len() {
            let mut end = (start + bytes).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            texts.push(text[start..end].to_string());
            start = end;
        }
    }
    if texts.is_empty() {
        bail!("{} holds no documents", corpus.display());
    }
    Ok(texts)
}

struct Peer {
    key: iroh::SecretKey,
    store: SharedStore,
    blobs: std::sync::Arc<sync_core::blobs::Blobs>,
    unit: &'static str,
}

/// Node A of Xã Thạch Hà and node B of Xã Lộc Hà, each with a fresh store under `dir`,
/// and the roster that lists them.
fn two_nodes(dir: &std::path::Path) -> anyhow::Result<(Peer, Peer, Roster)> {
    let a = peer(dir, "a", "18562")?;
    let b = peer(dir, "b", "18568")?;
    let roster = roster_of(&[&a, &b])?;
    Ok((a, b, roster))
}

/// A node of `unit` with a fresh store and attachment directory under `dir`.
fn peer(dir: &std::path::Path, name: &str, unit: &'static str) -> anyhow::Result<Peer> {
    Ok(Peer {
        key: iroh::SecretKey::generate(),
        store: service::share(Store::create(&dir.join(format!("{name}.db")), unit, name)?),
        blobs: std::sync::Arc::new(Blobs::open(&dir.join(format!("{name}-attachments")))?),
        unit,
    })
}

/// The roster that lists `peers` as nodes of their units.
fn roster_of(peers: &[&Peer]) -> anyhow::Result<Roster> {
    let text: String = peers
        .iter()
        .map(|p| {
            format!(
                "[[member]]\nid = \"{}\"\nunit = \"{}\"\nrole = \"node\"\n",
                p.key.public(),
                p.unit
            )
        })
        .collect();
    Roster::parse(&text).map_err(anyhow::Error::msg)
}

/// The header of a document A owns and shares with B.
fn shared_header() -> Header {
    Header {
        kind: Kind::Document,
        unit: "18562".into(),
        audience: vec!["18562".into(), "18568".into()],
        created_by: "bench".into(),
        created_at: model::now_vietnam(),
        confidential: false,
    }
}

/// Gives each of `ids` a new subject on `store`; returns their heads afterwards.
fn change_subjects(
    store: &SharedStore,
    ids: &[DocId],
    subject: &str,
) -> anyhow::Result<Vec<(DocId, Vec<automerge::ChangeHash>)>> {
    let mut store = service::lock(store);
    ids.iter()
        .enumerate()
        .map(|(n, id)| {
            let patch = DocumentPatch {
                subject: Some(format!("{subject} {n}")),
                ..Default::default()
            };
            store.modify(id, |d| model::update_document(d, &patch))?;
            let heads = store.get(id)?.map(|d| d.get_heads()).unwrap_or_default();
            Ok((id.clone(), heads))
        })
        .collect()
}

async fn start_net(peer: &Peer, dial: Option<PeerAddr>, roster: &Roster) -> anyhow::Result<Net> {
    Ok(Net::start(
        peer.key.clone(),
        peer.store.clone(),
        NetConfig {
            listen: "127.0.0.1:0".parse()?,
            me: member(peer.unit),
            dial: dial.into_iter().map(|d| (d, Role::Node)).collect(),
            roster: roster.clone(),
            roster_keys: vec![],
            mdns: false,
            blobs: peer.blobs.clone(),
            attachment_rate: None,
        },
    )
    .await?)
}

fn frame_bytes(net: &Net, peer: &Net) -> u64 {
    net.status()
        .into_iter()
        .find(|p| p.id == peer.id().to_string())
        .map_or(0, |p| p.bytes_in + p.bytes_out)
}

/// Connects B to A and waits until `done` holds on B's store; returns the time and the
/// frame bytes that crossed.
async fn sync_until(
    a: &Net,
    b: &Peer,
    roster: &Roster,
    done: impl Fn(&mut Store) -> anyhow::Result<bool>,
) -> anyhow::Result<(Duration, u64)> {
    let addr = PeerAddr {
        id: a.id(),
        addr: a.bound_sockets()[0],
    };
    let started = Instant::now();
    let net_b = start_net(b, Some(addr), roster).await?;
    let deadline = started + Duration::from_secs(900);
    loop {
        if done(&mut service::lock(&b.store))? {
            break;
        }
        if Instant::now() > deadline {
            bail!("B never caught up");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    // Let the last acknowledgements cross before counting and closing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bytes = frame_bytes(&net_b, a);
    net_b.shutdown().await;
    Ok((elapsed, bytes))
}

struct ReconnectRun {
    cold: (Duration, u64),
    reconnect: (Duration, u64),
    wiped: (Duration, u64),
    recreated: (Duration, u64),
    content_bytes: u64,
}

async fn reconnect(
    documents: usize,
    changed: usize,
    bodies: &[String],
) -> anyhow::Result<ReconnectRun> {
    let dir = tempfile::tempdir()?;
    let (a, mut b, roster) = two_nodes(dir.path())?;
    let header = shared_header();
    let mut ids = Vec::with_capacity(documents);
    let mut content_bytes = 0u64;
    {
        let mut store = service::lock(&a.store);
        for chunk in (0..documents).collect::<Vec<_>>().chunks(500) {
            store.batch(|s| {
                for &i in chunk {
                    let body = &bodies[i % bodies.len()];
                    let doc = model::create_document(
                        &header,
                        &DocumentPatch {
                            subject: Some(format!("Văn bản số {i}")),
                            body: Some(body.clone()),
                            ..Default::default()
                        },
                    )?;
                    content_bytes += doc.save().len() as u64;
                    let id = DocId::new();
                    s.put(&id, doc, &[])?;
                    ids.push(id);
                }
                Ok::<_, anyhow::Error>(())
            })?;
        }
    }
    let net_a = start_net(&a, None, &roster).await?;
    let count = move |n: usize| move |s: &mut Store| Ok(s.count()? as usize >= n);

    let cold = sync_until(&net_a, &b, &roster, count(documents)).await?;

    // B is away while A changes a few documents.
    let touched: Vec<DocId> = ids
        .iter()
        .step_by(documents / changed.max(1))
        .take(changed)
        .cloned()
        .collect();
    let wanted = change_subjects(&a.store, &touched, "Văn bản đã sửa")?;
    let caught_up = |wanted: Vec<(DocId, Vec<automerge::ChangeHash>)>| {
        move |s: &mut Store| -> anyhow::Result<bool> {
            for (id, heads) in &wanted {
                match s.get(id)? {
                    Some(d) if d.get_heads() == *heads => {}
                    _ => return Ok(false),
                }
            }
            Ok(true)
        }
    };
    let reconnect = sync_until(&net_a, &b, &roster, caught_up(wanted)).await?;

    // B's disk is replaced: same key, an empty store.
    b.store = service::share(Store::create(&dir.path().join("b-wiped.db"), "18568", "B")?);
    let wiped = sync_until(&net_a, &b, &roster, count(documents)).await?;

    // B is restored onto a new store (a new epoch) holding the same records, while A
    // changes a few more: B has no valid cursor, and the catalogs are reconciled.
    let recreated = Store::create(&dir.path().join("b-recreated.db"), "18568", "B")?;
    let recreated = service::share(recreated);
    {
        let mut from = service::lock(&b.store);
        let mut to = service::lock(&recreated);
        for chunk in ids.chunks(500) {
            to.batch(|t| {
                for id in chunk {
                    if let Some(doc) = from.get(id)? {
                        t.put(id, doc.clone(), &[])?;
                    }
                }
                Ok::<_, anyhow::Error>(())
            })?;
        }
    }
    b.store = recreated;
    let wanted = change_subjects(&a.store, &touched, "Văn bản sửa lần hai")?;
    let recreated = sync_until(&net_a, &b, &roster, caught_up(wanted)).await?;
    net_a.shutdown().await;
    Ok(ReconnectRun {
        cold,
        reconnect,
        wiped,
        recreated,
        content_bytes,
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

/// Bytes that do not compress, the same on every run.
fn incompressible(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sequential write of `data` to a new file in `dir`, synced: what the disk allows.
fn disk_write(dir: &std::path::Path, data: &[u8]) -> anyhow::Result<Duration> {
    use std::io::Write;
    let path = dir.join("disk-probe");
    let started = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    for chunk in data.chunks(1 << 20) {
        f.write_all(chunk)?;
    }
    f.sync_all()?;
    let took = started.elapsed();
    std::fs::remove_file(path)?;
    Ok(took)
}

/// The transport's ceiling: `data` pushed over one plain iroh QUIC stream on loopback,
/// nothing verified or stored.
async fn raw_stream(data: &[u8]) -> anyhow::Result<Duration> {
    use iroh::endpoint::presets;
    const ALPN: &[u8] = b"cabinet-bench/raw";
    let bind = |key: iroh::SecretKey| async move {
        iroh::Endpoint::builder(presets::Minimal)
            .secret_key(key)
            .alpns(vec![ALPN.to_vec()])
            .clear_ip_transports()
            .bind_addr("127.0.0.1:0".parse::<std::net::SocketAddr>()?)?
            .bind()
            .await
            .map_err(anyhow::Error::from)
    };
    let server = bind(iroh::SecretKey::generate()).await?;
    let client = bind(iroh::SecretKey::generate()).await?;
    let addr = iroh::EndpointAddr::new(server.id()).with_ip_addr(server.bound_sockets()[0]);
    let receiving = tokio::spawn(async move {
        let conn = server.accept().await.expect("a connection").await?;
        let (_send, mut recv) = conn.accept_bi().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0usize;
        while let Some(k) = recv.read(&mut buf).await? {
            n += k;
        }
        conn.close(0u32.into(), b"done");
        Ok::<_, anyhow::Error>(n)
    });
    let started = Instant::now();
    let conn = client.connect(addr, ALPN).await?;
    let (mut send, _recv) = conn.open_bi().await?;
    for chunk in data.chunks(1 << 20) {
        send.write_all(chunk).await?;
    }
    send.finish()?;
    let got = receiving.await??;
    let took = started.elapsed();
    anyhow::ensure!(got == data.len(), "the raw stream lost bytes");
    client.close().await;
    Ok(took)
}

struct AttachmentRun {
    raw: Duration,
    disk: Duration,
    whole: Duration,
    resent: u64,
}

/// A's document lists a file of `data`; B syncs it from A over iroh, once whole and once
/// stopped half-way and restarted.
async fn attachment(data: &[u8]) -> anyhow::Result<AttachmentRun> {
    let dir = tempfile::tempdir()?;
    let disk = disk_write(dir.path(), data)?;
    let raw = raw_stream(data).await?;
    let (a, b, roster) = two_nodes(dir.path())?;
    let (hash, size) = tokio::task::block_in_place(|| a.blobs.import(data))?;
    let attachment = model::Attachment {
        hash: hash.to_hex().to_string(),
        name: "scan.pdf".into(),
        size,
        media_type: "application/pdf".into(),
        added_by: None,
        added_at: None,
        added_on: None,
    };
    let mut doc = model::create_document(&shared_header(), &DocumentPatch::default())?;
    model::add_attachment(&mut doc, &attachment)?;
    put(&a.store, &DocId::new(), doc)?;
    let net_a = start_net(&a, None, &roster).await?;
    let dial = PeerAddr {
        id: net_a.id(),
        addr: net_a.bound_sockets()[0],
    };
    let complete = |p: &Peer| p.blobs.state(&hash) == sync_core::blobs::BlobState::Complete;

    // Whole: from B's start to the file verified and in place.
    let started = Instant::now();
    let net_b = start_net(&b, Some(dial.clone()), &roster).await?;
    while !complete(&b) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let whole = started.elapsed();
    net_b.shutdown().await;

    // Resume: a second receiver stops at half and starts again.
    let c = peer(dir.path(), "c", "18568")?;
    let roster = roster_of(&[&a, &c])?;
    net_a.shutdown().await;
    let net_a = start_net(&a, None, &roster).await?;
    let dial = PeerAddr {
        id: net_a.id(),
        addr: net_a.bound_sockets()[0],
    };
    let sent_before = a
        .blobs
        .counters
        .bytes_sent
        .load(std::sync::atomic::Ordering::Relaxed);
    let net_c = start_net(&c, Some(dial.clone()), &roster).await?;
    loop {
        if let sync_core::blobs::BlobState::Partial(n) = c.blobs.state(&hash)
            && n >= size / 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    net_c.shutdown().await;
    drop(net_c);
    let net_c = start_net(&c, Some(dial), &roster).await?;
    while !complete(&c) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent = a
        .blobs
        .counters
        .bytes_sent
        .load(std::sync::atomic::Ordering::Relaxed)
        - sent_before;
    net_c.shutdown().await;
    net_a.shutdown().await;
    Ok(AttachmentRun {
        raw,
        disk,
        whole,
        resent: sent.saturating_sub(size),
    })
}

/// The corpus imported as `cabinet-node import` reads it, `copies` times.
fn imported_store(corpus: &PathBuf, copies: usize) -> anyhow::Result<(Store, Vec<String>)> {
    let mut store = Store::in_memory("18562")?;
    let mut subjects = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(corpus)
        .with_context(|| format!("cannot read {}", corpus.display()))?
        .collect::<Result<_, _>>()?;
    files.sort_by_key(|e| e.path());
    let mut parsed = Vec::new();
    for f in files {
        let path = f.path();
        let text = std::fs::read_to_string(&path)?;
        let doc = if path.extension().is_some_and(|e| e == "csv") {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            sync_core::import::parse_table(&text, stem)
        } else {
            sync_core::import::parse_document(&text)
        };
        if let Ok(d) = doc {
            subjects.extend(d.subject.clone());
            parsed.push(d);
        }
    }
    store.batch(|s| {
        for _ in 0..copies {
            for d in &parsed {
                let patch = DocumentPatch {
                    doc_type: d.doc_type.clone(),
                    number: d.number.clone(),
                    notation: d.notation.clone(),
                    issuer: d.issuer.clone(),
                    subject: d.subject.clone(),
                    body: Some(d.body.clone()),
                    imported: true,
                    ..Default::default()
                };
                let header = Header {
                    audience: vec!["18562".into()],
                    ..shared_header()
                };
                s.put(&DocId::new(), model::create_document(&header, &patch)?, &[])?;
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok((store, subjects))
}

/// What a clerk types without diacritics.
fn plain(s: &str) -> String {
    sync_core::store::fold_for_search(s).to_lowercase()
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn search_bench(corpus: &PathBuf, copies: usize, repeat: usize) -> anyhow::Result<()> {
    for copies in [1, copies] {
        let started = Instant::now();
        let (store, subjects) = imported_store(corpus, copies)?;
        let documents = store.count()?;
        println!(
            "{documents} documents ({copies} × the corpus) imported and indexed in {:.2?}",
            started.elapsed()
        );
        let mut queries: Vec<String> = vec![
            "quyet dinh".into(),
            "ha tinh".into(),
            "sap xep don vi hanh chinh cap xa".into(),
            "nghi quyet uy ban thuong vu quoc hoi".into(),
            "đ".into(),
            "nq-ubtvqh15".into(),
        ];
        // A subject typed in full without diacritics, as a clerk looks for one document.
        queries.extend(subjects.first().map(|s| plain(s)));
        println!(
            "{:<48} {:>8} {:>10} {:>10}",
            "query (first page of 20, with snippets)", "results", "median", "p99"
        );
        let all = |_: &serde_json::Value| true;
        for q in &queries {
            let words = sync_core::search::query_words(q);
            let mut times = Vec::with_capacity(repeat);
            let mut found = 0;
            let mut more = false;
            for _ in 0..repeat {
                let t = Instant::now();
                let (hits, m) = store.search(q, &all, false, &Default::default(), 0, 20)?;
                for h in &hits {
                    std::hint::black_box(sync_core::search::result_json(h, &words));
                }
                times.push(t.elapsed());
                found = hits.len();
                more = m;
            }
            let shown: String = q.chars().take(46).collect();
            println!(
                "{shown:<48} {:>8} {:>10.2?} {:>10.2?}",
                format!("{found}{}", if more { "+" } else { "" }),
                percentile(times.clone(), 0.5),
                percentile(times, 0.99)
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Attachment { mib, runs } => {
            let data = incompressible((mib << 20) as usize);
            println!("attachment: {mib} MiB, A→B over iroh loopback, {runs} runs");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let mut all = Vec::new();
            for _ in 0..runs {
                all.push(runtime.block_on(attachment(&data))?);
            }
            let rate = |d: Duration| mib as f64 / d.as_secs_f64();
            let disk = median(all.iter().map(|r| r.disk).collect());
            let whole = median(all.iter().map(|r| r.whole).collect());
            let mut resent: Vec<u64> = all.iter().map(|r| r.resent).collect();
            resent.sort();
            let resent = resent[resent.len() / 2];
            println!(
                "disk, sequential write + fsync: {disk:.2?} ({:.0} MiB/s)",
                rate(disk)
            );
            let raw = median(all.iter().map(|r| r.raw).collect());
            println!(
                "one plain iroh QUIC stream, nothing verified or stored: {raw:.2?} ({:.0} MiB/s)",
                rate(raw)
            );
            println!(
                "Cabinet, B fetches and verifies the whole file: {whole:.2?} ({:.0} MiB/s, {:.0}% of the disk, {:.0}% of the plain stream)",
                rate(whole),
                100.0 * disk.as_secs_f64() / whole.as_secs_f64(),
                100.0 * raw.as_secs_f64() / whole.as_secs_f64()
            );
            println!(
                "resume after stopping half-way: {resent} bytes sent beyond the file once ({:.2}%, bao hashes included)",
                100.0 * resent as f64 / (mib << 20) as f64
            );
        }
        Command::Search {
            corpus,
            copies,
            repeat,
        } => search_bench(&corpus, copies, repeat)?,
        Command::Reconnect {
            documents,
            changed,
            body_bytes,
            corpus,
            runs,
        } => {
            let bodies = bodies(&corpus, body_bytes)?;
            println!(
                "reconnect: {documents} documents of about {body_bytes} bytes of body, \
                 {changed} changed while away, {runs} runs, A→B over iroh loopback"
            );
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let mut all = Vec::new();
            for _ in 0..runs {
                all.push(runtime.block_on(reconnect(documents, changed, &bodies))?);
            }
            let report =
                |name: &str, full: bool, pick: &dyn Fn(&ReconnectRun) -> (Duration, u64)| {
                    let time = median(all.iter().map(|r| pick(r).0).collect());
                    let mut bytes: Vec<u64> = all.iter().map(|r| pick(r).1).collect();
                    bytes.sort();
                    let bytes = bytes[bytes.len() / 2];
                    let rate = if full {
                        format!("{:>8.0} docs/s", documents as f64 / time.as_secs_f64())
                    } else {
                        String::new()
                    };
                    println!("{name:<44} {time:>9.3?} {bytes:>12} frame bytes {rate}");
                    (time, bytes)
                };
            let content = all[0].content_bytes;
            println!("stored content (automerge save of every document): {content} bytes");
            let (_, cold_bytes) = report("cold sync to an empty node", true, &|r| r.cold);
            report(&format!("reconnect after {changed} changed"), false, &|r| {
                r.reconnect
            });
            report("wiped peer (same key, empty store)", true, &|r| r.wiped);
            report(
                &format!("re-created peer (new epoch), {changed} changed"),
                false,
                &|r| r.recreated,
            );
            println!(
                "cold sync wire / content: {:.2}×; one document's worth on average: {} bytes",
                cold_bytes as f64 / content as f64,
                cold_bytes / documents.max(1) as u64
            );
        }
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
