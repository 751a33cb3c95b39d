//! Deterministic simulation of the sync protocol core: three commune nodes, two cluster
//! relays and a province relay, joined by links whose network drops, delays, duplicates
//! and reorders messages, and that are cut and restored; clerks edit at random (new
//! documents with various audiences, subjects, body text, annotations, deletions), and
//! sites restart, losing everything they held in memory. No sockets and no wall clock:
//! record ids, actors, epochs, sequence numbers and time stamps all follow from the seed
//! (`sync_core::determinism`), so a failing seed replays (exactly within one process;
//! see that module for what can still differ between processes).
//!
//! After the chaos the network heals (every link reconnects, no more faults) and the run
//! checks what a clerk relies on:
//! - every replica of a record has the same heads and the same JSON, and every site that
//!   may hold a record holds it;
//! - no site holds a record the policy keeps from it;
//! - every edit a site committed (acknowledged to its clerk) is on every site that may
//!   hold the record;
//! - the sessions go quiet: no message loop persists;
//! - no cursor ever claims more than arrived: whenever site X holds cursor N for site Y's
//!   store, X has every change of each record Y last changed at or below N. This is
//!   checked during the chaos too, so a record counted as delivered and then lost fails.
//!
//! `CABINET_SIM_SEEDS=N` runs N seeds (default 1,000, on two threads); `CABINET_SIM_SEED=S`
//! replays seed S alone and prints every event.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use automerge::{Automerge, ChangeHash, ReadDoc};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sync_core::determinism;
use sync_core::model::{self, Anchor, DocId, DocumentPatch, Header, Kind, NewAnnotation};
use sync_core::policy::{self, Member, Role};
use sync_core::protocol::{Message, Session};
use sync_core::store::Store;
use sync_core::units::UnitCode;

/// Events of the chaotic part of one run.
const CHAOS_STEPS: usize = 240;

/// Messages delivered after healing before the run is declared a message loop.
const QUIET_WITHIN: usize = 50_000;

/// 2026-01-01T00:00:00Z, where every simulated clock starts.
const START_MICROS: u64 = 1_767_225_600_000_000;

const A: &str = "18562"; // Xã Thạch Hà, cluster 42-445
const B: &str = "18568"; // same cluster
const C: &str = "18133"; // Xã Hương Sơn, cluster 42-439

struct Site {
    name: &'static str,
    member: Member,
    path: PathBuf,
    store: Store,
    /// Heads of each record right after an edit this site committed.
    acked: Vec<(DocId, Vec<ChangeHash>)>,
}

struct Conn {
    /// The session on the link's first site, talking to the second, and the reverse.
    first: Session,
    second: Session,
    to_second: VecDeque<Message>,
    to_first: VecDeque<Message>,
}

struct Link {
    first: usize,
    second: usize,
    conn: Option<Conn>,
}

struct Stats {
    delivered: u64,
    dropped: u64,
    duplicated: u64,
    reordered: u64,
    edits: u64,
    restarts: u64,
    cuts: u64,
    session_faults: u64,
}

struct World {
    rng: StdRng,
    sites: Vec<Site>,
    links: Vec<Link>,
    trace: bool,
    stats: Stats,
    _dir: tempfile::TempDir,
}

fn member(unit: &str, role: Role) -> Member {
    Member {
        unit: UnitCode::parse(unit).expect("a unit of the national list"),
        role,
    }
}

/// SQLite files on a RAM-backed file system where there is one: the simulation needs
/// real files (restarts reopen them) but not the disk's fsync latency.
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("a temporary directory")
}

impl World {
    fn new(seed: u64, trace: bool) -> World {
        let dir = scratch_dir();
        let layout: [(&'static str, &str, Role); 6] = [
            ("A", A, Role::Node),
            ("B", B, Role::Node),
            ("C", C, Role::Node),
            ("R1", "42-445", Role::Relay),
            ("R2", "42-439", Role::Relay),
            ("P", "42", Role::Relay),
        ];
        let sites = layout
            .iter()
            .map(|(name, unit, role)| {
                let path = dir.path().join(format!("{name}.db"));
                Site {
                    name,
                    member: member(unit, *role),
                    store: Store::create(&path, unit, name).expect("store"),
                    path,
                    acked: Vec::new(),
                }
            })
            .collect();
        // A and B see each other on the LAN; each commune reaches its cluster relay, and
        // the cluster relays reach the province relay.
        let links = [(0, 1), (0, 3), (1, 3), (2, 4), (3, 5), (4, 5)]
            .into_iter()
            .map(|(first, second)| Link {
                first,
                second,
                conn: None,
            })
            .collect();
        World {
            rng: StdRng::seed_from_u64(seed ^ 0x5eed_cab1_9e70_0001),
            sites,
            links,
            trace,
            stats: Stats {
                delivered: 0,
                dropped: 0,
                duplicated: 0,
                reordered: 0,
                edits: 0,
                restarts: 0,
                cuts: 0,
                session_faults: 0,
            },
            _dir: dir,
        }
    }

    fn log(&self, event: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("{}", event());
        }
    }

    fn connect(&mut self, l: usize) {
        let (f, s) = (self.links[l].first, self.links[l].second);
        let (fm, sm) = (self.sites[f].member.clone(), self.sites[s].member.clone());
        let mut first = Session::new(fm.clone(), self.sites[s].name.into(), Some(sm.clone()));
        let mut second = Session::new(sm, self.sites[f].name.into(), Some(fm));
        let to_second = first.start(&self.sites[f].store).expect("hello").into();
        let to_first = second.start(&self.sites[s].store).expect("hello").into();
        self.log(|| format!("connect {}–{}", self.sites[f].name, self.sites[s].name));
        self.links[l].conn = Some(Conn {
            first,
            second,
            to_second,
            to_first,
        });
    }

    /// Closes a link: each side that is still running keeps its sync states, as a
    /// session does when its connection ends.
    fn cut(&mut self, l: usize, crashed: Option<usize>) {
        let Some(mut conn) = self.links[l].conn.take() else {
            return;
        };
        let (f, s) = (self.links[l].first, self.links[l].second);
        if crashed != Some(f) {
            conn.first
                .persist_states(&mut self.sites[f].store)
                .expect("persist");
        }
        if crashed != Some(s) {
            conn.second
                .persist_states(&mut self.sites[s].store)
                .expect("persist");
        }
        self.log(|| format!("cut {}–{}", self.sites[f].name, self.sites[s].name));
    }

    /// A crash: the site's sessions, cache and everything else in memory are gone; its
    /// store is reopened from the file.
    fn restart(&mut self, site: usize) {
        for l in 0..self.links.len() {
            if self.links[l].first == site || self.links[l].second == site {
                self.cut(l, Some(site));
            }
        }
        let path = self.sites[site].path.clone();
        let fresh = Store::open(&path).expect("the store reopens after a crash");
        self.sites[site].store = fresh;
        self.stats.restarts += 1;
        self.log(|| format!("restart {}", self.sites[site].name));
    }

    /// The site's store is restored onto a new store (a new epoch) holding the same
    /// records: its peers' cursors for it mean nothing any more, and it holds none for
    /// them, so every link reconciles catalogs when it comes back.
    fn recreate(&mut self, site: usize) {
        for l in 0..self.links.len() {
            if self.links[l].first == site || self.links[l].second == site {
                self.cut(l, Some(site));
            }
        }
        let old = &mut self.sites[site];
        let path = old
            .path
            .with_extension(format!("{}.db", self.stats.restarts + 1));
        let mut fresh =
            Store::create(&path, old.member.unit.as_str(), old.name).expect("a new store");
        let ids: Vec<DocId> = old
            .store
            .changed_since(0, usize::MAX >> 1)
            .expect("scan")
            .into_iter()
            .map(|m| m.id)
            .collect();
        fresh
            .batch(|f| {
                for id in &ids {
                    let doc = old.store.get(id)?.expect("listed").clone();
                    f.put(id, doc, &[])?;
                }
                Ok::<_, sync_core::store::StoreError>(())
            })
            .expect("records copied");
        old.store = fresh;
        old.path = path;
        self.stats.restarts += 1;
        self.log(|| format!("re-created {}", self.sites[site].name));
    }

    /// Hands one message to the site at one end of a link; its replies go back after its
    /// transaction committed. A fault ends the connection, as it would over QUIC.
    fn deliver(&mut self, l: usize, to_first: bool, message: Message) {
        let link = &mut self.links[l];
        let Some(conn) = link.conn.as_mut() else {
            return;
        };
        let (site, session, back) = if to_first {
            (link.first, &mut conn.first, &mut conn.to_second)
        } else {
            (link.second, &mut conn.second, &mut conn.to_first)
        };
        let store = &mut self.sites[site].store;
        let described = if self.trace {
            describe(&message)
        } else {
            String::new()
        };
        match store.batch(|s| session.handle(s, message)) {
            Ok(out) => {
                back.extend(out);
                self.stats.delivered += 1;
                self.log(|| format!("  → {} {described}", self.sites[site].name));
            }
            Err(e) => {
                self.stats.session_faults += 1;
                self.log(|| {
                    format!(
                        "  → {} {described}: session ends: {e}",
                        self.sites[site].name
                    )
                });
                self.cut(l, None);
            }
        }
    }

    /// What a site's sessions do when its store tells them it changed.
    fn poll(&mut self, site: usize) {
        for l in 0..self.links.len() {
            let link = &mut self.links[l];
            let Some(conn) = link.conn.as_mut() else {
                continue;
            };
            let (session, out) = if link.first == site {
                (&mut conn.first, &mut conn.to_second)
            } else if link.second == site {
                (&mut conn.second, &mut conn.to_first)
            } else {
                continue;
            };
            let store = &mut self.sites[site].store;
            match store.batch(|s| session.poll_local(s)) {
                Ok(msgs) => out.extend(msgs),
                Err(e) => panic!("polling local changes failed: {e}"),
            }
        }
    }

    /// One step of chaos.
    fn chaos_step(&mut self) {
        match self.rng.random_range(0..100u32) {
            0..22 => self.edit(),
            22..70 => {
                self.network_step(true);
            }
            70..80 => {
                let site = self.rng.random_range(0..self.sites.len());
                self.poll(site);
            }
            80..85 => {
                let l = self.rng.random_range(0..self.links.len());
                if self.links[l].conn.is_some() {
                    self.stats.cuts += 1;
                    self.cut(l, None);
                }
            }
            85..94 => {
                let l = self.rng.random_range(0..self.links.len());
                if self.links[l].conn.is_none() {
                    self.connect(l);
                }
            }
            94..96 => {
                let site = self.rng.random_range(0..self.sites.len());
                self.restart(site);
            }
            96 => {
                let site = self.rng.random_range(0..self.sites.len());
                self.recreate(site);
            }
            _ => determinism::advance(self.rng.random_range(1..5_000_000)),
        }
    }

    /// Moves one message on a random open link, perhaps losing, repeating or reordering
    /// it when the network is faulty. Returns whether anything was waiting.
    fn network_step(&mut self, faulty: bool) -> bool {
        let open: Vec<(usize, bool)> = (0..self.links.len())
            .filter_map(|l| self.links[l].conn.as_ref().map(|c| (l, c)))
            .flat_map(|(l, c)| {
                let mut v = Vec::new();
                if !c.to_first.is_empty() {
                    v.push((l, true));
                }
                if !c.to_second.is_empty() {
                    v.push((l, false));
                }
                v
            })
            .collect();
        if open.is_empty() {
            return false;
        }
        let (l, to_first) = open[self.rng.random_range(0..open.len())];
        let fault = if faulty {
            self.rng.random_range(0..100u32)
        } else {
            99
        };
        let conn = self.links[l].conn.as_mut().expect("open");
        let queue = if to_first {
            &mut conn.to_first
        } else {
            &mut conn.to_second
        };
        let message = match fault {
            0..4 => {
                queue.pop_front();
                self.stats.dropped += 1;
                self.log(|| "  (a message is lost)".into());
                return true;
            }
            4..7 => {
                let m = queue.front().cloned().expect("waiting");
                self.stats.duplicated += 1;
                m
            }
            7..10 => {
                let i = self.rng.random_range(0..queue.len());
                self.stats.reordered += (i > 0) as u64;
                queue.remove(i).expect("in range")
            }
            _ => queue.pop_front().expect("waiting"),
        };
        // Every message crosses the wire in its encoding.
        let message = Message::decode(&message.encode()).expect("messages round-trip");
        self.deliver(l, to_first, message);
        let site = if to_first {
            self.links[l].first
        } else {
            self.links[l].second
        };
        self.poll(site);
        true
    }

    /// A clerk at a random commune node does something.
    fn edit(&mut self) {
        let site = self.rng.random_range(0..3);
        let unit = self.sites[site].member.unit.as_str().to_string();
        let docs: Vec<DocId> = self.sites[site]
            .store
            .list(Some(Kind::Document), None, 10_000, true)
            .expect("list")
            .iter()
            .filter_map(|j| DocId::parse(j["id"].as_str()?).ok())
            .collect();
        let choice = if docs.is_empty() {
            0
        } else {
            self.rng.random_range(0..100u32)
        };
        let written = match choice {
            0..20 => self.create_document(site, &unit),
            20..75 => {
                let id = docs[self.rng.random_range(0..docs.len())].clone();
                self.edit_document(site, &id)
            }
            75..95 => {
                let id = docs[self.rng.random_range(0..docs.len())].clone();
                self.annotate(site, &unit, &id)
            }
            _ => {
                // Only a unit's own offices delete its documents (as the API allows).
                let id = docs[self.rng.random_range(0..docs.len())].clone();
                let own = self.sites[site]
                    .store
                    .meta(&id)
                    .expect("read")
                    .is_some_and(|m| m.header.unit == unit);
                if own {
                    let name = self.sites[site].name;
                    self.sites[site]
                        .store
                        .modify(&id, |d| model::tombstone(d, name))
                        .expect("delete");
                    Some(id)
                } else {
                    self.edit_document(site, &id)
                }
            }
        };
        if let Some(id) = written {
            let heads = self.sites[site]
                .store
                .get(&id)
                .expect("read")
                .expect("just written")
                .get_heads();
            self.log(|| format!("edit on {}: {id}", self.sites[site].name));
            self.sites[site].acked.push((id, heads));
            self.stats.edits += 1;
        }
    }

    fn create_document(&mut self, site: usize, unit: &str) -> Option<DocId> {
        let audiences: [&[&str]; 6] = [&[], &[A, B], &[A, C], &[B, C], &["42"], &["42-445"]];
        let audience: Vec<String> = audiences[self.rng.random_range(0..audiences.len())]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let secret = self.rng.random_bool(0.1);
        let header = Header {
            kind: Kind::Document,
            unit: unit.into(),
            audience,
            created_by: self.sites[site].name.into(),
            created_at: model::now_vietnam(),
            confidential: secret,
        };
        let n = self.rng.random_range(0..1000u32);
        let doc = model::create_document(
            &header,
            &DocumentPatch {
                subject: Some(format!("Văn bản số {n}")),
                body: Some("Điều 1. Quy định chung.\nĐiều 2. Tổ chức thực hiện.".into()),
                secrecy: secret.then(|| "Mật".into()),
                ..Default::default()
            },
        )
        .expect("a new document");
        let id = DocId::new();
        self.sites[site].store.put(&id, doc, &[]).expect("stored");
        Some(id)
    }

    fn edit_document(&mut self, site: usize, id: &DocId) -> Option<DocId> {
        let len = {
            let doc = self.sites[site].store.get(id).expect("read")?;
            model::body_text(doc).ok()?.chars().count()
        };
        let pos = self.rng.random_range(0..=len);
        let delete = self.rng.random_range(0..=(len - pos).min(4));
        let n = self.rng.random_range(0..100u32);
        let patch = if self.rng.random_bool(0.3) {
            DocumentPatch {
                subject: Some(format!("Trích yếu {n} ({})", self.sites[site].name)),
                ..Default::default()
            }
        } else {
            DocumentPatch {
                body_splice: Some(model::BodySplice {
                    pos,
                    delete,
                    insert: format!("«{}{n}»", self.sites[site].name),
                }),
                ..Default::default()
            }
        };
        let (_, seq) = self.sites[site]
            .store
            .modify(id, |d| model::update_document(d, &patch))
            .expect("edit");
        seq.map(|_| id.clone())
    }

    fn annotate(&mut self, site: usize, unit: &str, target: &DocId) -> Option<DocId> {
        let name = self.sites[site].name;
        let target_doc: Automerge = self.sites[site].store.get(target).expect("read")?.clone();
        let target_header = model::read_header(&target_doc).ok()?;
        let len = model::body_text(&target_doc).ok()?.chars().count();
        let start = self.rng.random_range(0..=len);
        let end = self.rng.random_range(start..=len);
        let private = self.rng.random_bool(0.3);
        let header = Header {
            kind: Kind::Annotation,
            unit: unit.into(),
            audience: target_header.audience.clone(),
            created_by: name.into(),
            created_at: model::now_vietnam(),
            confidential: private,
        };
        let input = NewAnnotation {
            text: format!("Ý kiến của {name}"),
            anchor: Some(Anchor { start, end }),
            visibility: if private {
                model::Visibility::Private
            } else {
                model::Visibility::Audience
            },
            shared_with: vec![],
            author: Some(name.into()),
        };
        let doc = model::create_annotation(&header, target, &target_doc, &input).ok()?;
        let id = DocId::new();
        self.sites[site].store.put(&id, doc, &[]).expect("stored");
        Some(id)
    }

    /// Every link reconnects (a stalled connection times out and is redialled), then the
    /// fault-free network runs until nothing moves.
    fn heal(&mut self) {
        for l in 0..self.links.len() {
            self.cut(l, None);
            self.connect(l);
        }
        let mut moved = 0;
        loop {
            for site in 0..self.sites.len() {
                self.poll(site);
            }
            if !self.network_step(false) {
                break;
            }
            moved += 1;
            assert!(
                moved < QUIET_WITHIN,
                "the sessions never went quiet after healing: a message loop"
            );
        }
        self.log(|| format!("healed after {moved} messages"));
        // Every session has caught up: nothing offered and unconfirmed, nothing announced
        // and not received.
        for link in &self.links {
            let conn = link.conn.as_ref().expect("connected while healing");
            for (session, site) in [(&conn.first, link.first), (&conn.second, link.second)] {
                assert!(
                    session.is_idle(),
                    "{}'s session with {} never caught up ({} pending out, {} pending in)",
                    self.sites[site].name,
                    session.peer_id(),
                    session.pending_out(),
                    session.pending_in()
                );
            }
        }
    }

    /// Whenever X holds cursor N for Y's current store, X has every change of each
    /// record Y last changed at or below N, if X may hold it and may take it from Y. A
    /// node is the source only of its own unit's records: another unit's record it
    /// passes on is refused by a peer that does not hold it yet, and comes to that peer
    /// from elsewhere, with the node's changes following in the exchange that starts
    /// then (`check_converged` sees that they all arrive).
    fn check_cursors(&mut self) {
        for x in 0..self.sites.len() {
            for y in 0..self.sites.len() {
                if x == y {
                    continue;
                }
                let record = self.sites[x]
                    .store
                    .peer(self.sites[y].name)
                    .expect("peer record");
                if record.epoch.as_deref() != Some(self.sites[y].store.epoch()) {
                    continue;
                }
                let owed = self.sites[y]
                    .store
                    .changed_since(0, usize::MAX >> 1)
                    .expect("scan");
                for meta in owed.iter().filter(|m| m.seq <= record.cursor) {
                    if !policy::may_hold(&self.sites[x].member, &meta.header) {
                        continue;
                    }
                    let y_member = &self.sites[y].member;
                    if y_member.role == Role::Node && y_member.unit.as_str() != meta.header.unit {
                        continue;
                    }
                    let theirs = self.sites[y]
                        .store
                        .get(&meta.id)
                        .expect("read")
                        .expect("listed")
                        .get_heads();
                    let (xn, yn) = (self.sites[x].name, self.sites[y].name);
                    let ours = self.sites[x].store.get(&meta.id).expect("read");
                    let ours = ours.unwrap_or_else(|| {
                        panic!(
                            "{xn} holds cursor {} for {yn}, but lacks {} (seq {})",
                            record.cursor, meta.id, meta.seq
                        )
                    });
                    for h in &theirs {
                        assert!(
                            ours.get_change_by_hash(h).is_some(),
                            "{xn} holds cursor {} for {yn}, but lacks a change of {}",
                            record.cursor,
                            meta.id
                        );
                    }
                }
            }
        }
    }

    /// The checks after healing.
    fn check_converged(&mut self) {
        // Every record any site holds, by id, with the sites holding it.
        let mut all: BTreeMap<DocId, Vec<usize>> = BTreeMap::new();
        for (i, site) in self.sites.iter().enumerate() {
            for meta in site.store.changed_since(0, usize::MAX >> 1).expect("scan") {
                assert!(
                    policy::may_hold(&site.member, &meta.header),
                    "{} holds {}, which the policy keeps from it",
                    site.name,
                    meta.id
                );
                all.entry(meta.id).or_default().push(i);
            }
        }
        for (id, holders) in &all {
            let first = holders[0];
            let header = {
                let doc = self.sites[first]
                    .store
                    .get(id)
                    .expect("read")
                    .expect("held");
                model::read_header(doc).expect("header")
            };
            let reference = self.json(first, id);
            for i in 0..self.sites.len() {
                let name = self.sites[i].name;
                if !policy::may_hold(&self.sites[i].member, &header) {
                    continue;
                }
                assert!(
                    holders.contains(&i),
                    "{name} may hold {id} but never received it"
                );
                assert_eq!(
                    self.json(i, id),
                    reference,
                    "{name} and {} differ on {id}",
                    self.sites[first].name
                );
            }
        }
        for i in 0..self.sites.len() {
            let acked = self.sites[i].acked.clone();
            for (id, heads) in acked {
                for j in 0..self.sites.len() {
                    let holds = self.sites[j].store.get(&id).expect("read").cloned();
                    let Some(doc) = holds else { continue };
                    for h in &heads {
                        assert!(
                            doc.get_change_by_hash(h).is_some(),
                            "an edit acknowledged on {} is missing on {}",
                            self.sites[i].name,
                            self.sites[j].name
                        );
                    }
                }
            }
        }
    }

    fn json(&mut self, site: usize, id: &DocId) -> serde_json::Value {
        let doc = self.sites[site].store.get(id).expect("read").expect("held");
        model::to_json(id, doc).expect("json")
    }
}

fn describe(m: &Message) -> String {
    match m {
        Message::Hello { cursor, .. } => format!("Hello (cursor {cursor:?})"),
        Message::Sync { record, data } => format!("Sync {record} ({} bytes)", data.len()),
        Message::Refused { record } => format!("Refused {record}"),
        Message::Roster { signed } => format!("Roster ({} bytes)", signed.len()),
        Message::Catalog { ranges, .. } => format!("Catalog ({} ranges)", ranges.len()),
        Message::Progress { seq, .. } => format!("Progress {seq}"),
    }
}

/// One whole run; panics on any violated property.
fn run(seed: u64, trace: bool) -> Stats {
    let _clock = determinism::seeded(seed, START_MICROS);
    let mut world = World::new(seed, trace);
    for step in 0..CHAOS_STEPS {
        world.chaos_step();
        if step % 40 == 39 {
            world.check_cursors();
        }
    }
    world.heal();
    world.check_cursors();
    world.check_converged();
    world.stats
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn every_replica_converges_after_any_schedule_of_faults() {
    if let Some(seed) = env_u64("CABINET_SIM_SEED") {
        let s = run(seed, true);
        eprintln!(
            "seed {seed}: {} messages delivered, {} edits, {} restarts",
            s.delivered, s.edits, s.restarts
        );
        return;
    }
    let seeds = env_u64("CABINET_SIM_SEEDS").unwrap_or(1000);
    let workers = 2;
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            std::thread::spawn(move || {
                let mut totals = [0u64; 8];
                for seed in (w..seeds).step_by(workers as usize) {
                    let result = catch_unwind(AssertUnwindSafe(|| run(seed, false)));
                    match result {
                        Ok(s) => {
                            for (t, v) in totals.iter_mut().zip([
                                s.delivered,
                                s.dropped,
                                s.duplicated,
                                s.reordered,
                                s.edits,
                                s.restarts,
                                s.cuts,
                                s.session_faults,
                            ]) {
                                *t += v;
                            }
                        }
                        Err(_) => {
                            return Err(seed);
                        }
                    }
                }
                Ok(totals)
            })
        })
        .collect();
    let mut totals = [0u64; 8];
    let mut failed = Vec::new();
    for h in handles {
        match h.join().expect("worker") {
            Ok(t) => {
                for (a, b) in totals.iter_mut().zip(t) {
                    *a += b;
                }
            }
            Err(seed) => failed.push(seed),
        }
    }
    assert!(
        failed.is_empty(),
        "simulation failed for seed(s) {failed:?}; replay one with \
         CABINET_SIM_SEED={} cargo test -p cabinet-sync-core --test simulation",
        failed[0]
    );
    // Written past the test harness's capture, so the figures show in every run.
    let _ = writeln!(
        std::io::stderr(),
        "simulation: {seeds} seeds, {} messages delivered, {} lost, {} duplicated, {} \
         reordered, {} edits, {} restarts, {} links cut, {} sessions ended by a fault; \
         every replica converged",
        totals[0],
        totals[1],
        totals[2],
        totals[3],
        totals[4],
        totals[5],
        totals[6],
        totals[7]
    );
}

#[test]
fn a_seed_replays_exactly() {
    let digest = |seed| {
        let _clock = determinism::seeded(seed, START_MICROS);
        let mut world = World::new(seed, false);
        for _ in 0..CHAOS_STEPS {
            world.chaos_step();
        }
        world.heal();
        let mut out = Vec::new();
        for site in &mut world.sites {
            for meta in site.store.changed_since(0, usize::MAX >> 1).expect("scan") {
                // The whole record, byte for byte, and where it stands in the store.
                let bytes = site
                    .store
                    .get(&meta.id)
                    .expect("read")
                    .expect("held")
                    .save();
                out.push((site.name, meta.id.to_string(), meta.seq, bytes));
            }
        }
        (out, world.stats.delivered)
    };
    assert_eq!(digest(11), digest(11));
}
