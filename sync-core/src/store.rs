//! Durable storage of records in SQLite, with a bounded cache of loaded documents.
//!
//! Each record is kept as a compressed automerge snapshot plus the incremental change
//! chunks appended since; when the chunks outgrow the snapshot they are folded into a new
//! snapshot in the same transaction. Every stored change gets a local sequence number
//! (`seq`), which is what sync cursors point at: "everything this store had up to seq N".
//!
//! Durability: the database runs in WAL mode with `synchronous=FULL`, and a write returns
//! only after the transaction holding it has committed, so an acknowledged write survives
//! a crash or power cut.
//!
//! Sequence numbers are `max(previous + 1, microseconds since 1970)`. A store restored
//! from a backup therefore hands out numbers above any a peer saw before the restore
//! (assuming its clock is not behind the backup's), so a peer's cursor never hides the
//! changes made after a restore.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::path::Path;

use automerge::sync;
use automerge::{Automerge, ChangeHash};
use lru::LruCache;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value as Json;
use tokio::sync::watch;

use crate::determinism;
use crate::lifecycle::SeriesKey;
use crate::model::{self, DocId, Header, Kind, ModelError};

/// The meta key and version of the JSON kept with each record.
const RECORD_JSON: (&str, &str) = ("record_json", "4");

/// How many loaded documents the cache keeps by default.
pub const DEFAULT_CACHE_DOCUMENTS: usize = 256;

/// Below this size chunks are never folded into the snapshot: rewriting a snapshot costs
/// more than keeping a few small chunks.
const MIN_COMPACTION_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("record {0} not found")]
    NotFound(DocId),
    #[error("record {id} is stored but cannot be loaded: {reason}")]
    Corrupt {
        id: DocId,
        reason: Box<automerge::AutomergeError>,
    },
    #[error(transparent)]
    Model(Box<ModelError>),
    #[error("the store at {path} has not been initialised: run `init` first")]
    NotInitialised { path: String },
    #[error("the store's metadata is damaged: {0}")]
    BadMeta(String),
}

impl From<ModelError> for StoreError {
    fn from(e: ModelError) -> StoreError {
        StoreError::Model(Box::new(e))
    }
}

/// A store's identity: a random id created with it. A different epoch for a known peer
/// means its store was wiped or re-created, so old cursors no longer mean anything.
pub type Epoch = String;

/// What the store knows of a record without loading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    pub id: DocId,
    pub seq: u64,
    pub header: Header,
    pub deleted: bool,
    /// The document an annotation points at.
    pub target: Option<DocId>,
}

/// The cursor this store holds for a peer's store, and what it told that peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerRecord {
    /// The peer's epoch when the cursor was recorded.
    pub epoch: Option<Epoch>,
    /// Everything the peer stored up to this seq (in its numbering) is here.
    pub cursor: u64,
    /// Everything of ours up to this seq (in our numbering) is known to be on the peer.
    pub delivered: u64,
    pub last_sync: Option<String>,
}

/// Store-wide settings kept in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreInfo {
    pub epoch: Epoch,
    pub unit: String,
    pub name: String,
    /// What the data directory was created for (`node` or `relay`), if recorded.
    pub role: Option<String>,
}

pub struct Store {
    conn: Connection,
    cache: LruCache<DocId, Automerge>,
    info: StoreInfo,
    changed: watch::Sender<u64>,
    /// Nesting depth of `batch`; writes inside a batch share its transaction.
    batch_depth: u32,
    /// Records written inside the open batch, dropped from the cache if it rolls back.
    batch_touched: HashSet<DocId>,
    batch_max_seq: u64,
    /// SQLite's `data_version` when the cache was last known to match the database;
    /// another process committing (an import beside a running node) changes it.
    data_version: i64,
    /// Whether the open transaction found that another process had written since the
    /// cache was last checked (documents taken out before it began may be stale).
    others_wrote_before_batch: bool,
    /// The data directory's attachment files, where a process keeps them.
    blobs: Option<std::sync::Arc<crate::blobs::Blobs>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    unit TEXT NOT NULL,
    audience TEXT NOT NULL,
    confidential INTEGER NOT NULL,
    target TEXT,
    deleted INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    snapshot BLOB NOT NULL,
    snapshot_bytes INTEGER NOT NULL,
    chunk_bytes INTEGER NOT NULL DEFAULT 0,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_seq ON records(seq);
CREATE INDEX IF NOT EXISTS records_target ON records(target) WHERE target IS NOT NULL;
CREATE INDEX IF NOT EXISTS records_number_key ON records(json_extract(json, '$.number_key'))
    WHERE json_extract(json, '$.number_key') IS NOT NULL;
CREATE INDEX IF NOT EXISTS records_numbering ON records(json_extract(json, '$.numbering.key'))
    WHERE json_extract(json, '$.numbering.key') IS NOT NULL;
CREATE INDEX IF NOT EXISTS records_source ON records(json_extract(json, '$.source.document'))
    WHERE json_extract(json, '$.source.document') IS NOT NULL;
CREATE INDEX IF NOT EXISTS records_state ON records(unit, json_extract(json, '$.state'));
CREATE INDEX IF NOT EXISTS records_dispatched ON records(json_extract(json, '$.dispatch.at'))
    WHERE json_extract(json, '$.dispatch.at') IS NOT NULL;
CREATE TABLE IF NOT EXISTS chunks (
    record TEXT NOT NULL,
    n INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (record, n)
);
CREATE TABLE IF NOT EXISTS peers (
    peer TEXT PRIMARY KEY,
    epoch TEXT,
    cursor INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    last_sync TEXT
);
CREATE TABLE IF NOT EXISTS sync_states (
    peer TEXT NOT NULL,
    record TEXT NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (peer, record)
);
CREATE TABLE IF NOT EXISTS rosters (
    issuer TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    signed BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS attachment_refs (
    hash TEXT NOT NULL,
    record TEXT NOT NULL,
    size INTEGER NOT NULL,
    held INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hash, record)
);
CREATE INDEX IF NOT EXISTS attachment_refs_record ON attachment_refs(record);
CREATE TABLE IF NOT EXISTS attachment_sources (
    hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    unit TEXT NOT NULL,
    PRIMARY KEY (hash, size, unit)
);
CREATE INDEX IF NOT EXISTS attachment_refs_wanted ON attachment_refs(hash) WHERE held = 0;
CREATE TABLE IF NOT EXISTS search_keys (
    n INTEGER PRIMARY KEY,
    record TEXT NOT NULL UNIQUE
);
CREATE VIRTUAL TABLE IF NOT EXISTS fulltext USING fts5(
    record UNINDEXED, document UNINDEXED, subject, refs, body, notes,
    tokenize = 'unicode61 remove_diacritics 2'
);
";

/// One register series a store holds numbers (or the closing) of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesSummary {
    pub series: String,
    /// The issuing body as the first document of the series names it.
    pub body: String,
    pub year: i64,
    /// How many numbered documents the store holds in it.
    pub numbers: u64,
    pub closed: bool,
}

/// What a listing keeps besides kind, search and deletion.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListFilter<'a> {
    /// A lifecycle state, such as `received` (the incoming queue).
    pub state: Option<&'a str>,
    /// `outgoing` or `incoming`.
    pub direction: Option<&'a str>,
}

impl crate::lifecycle::Registry for Store {
    fn is_closed(&self, key: &SeriesKey) -> Result<bool, String> {
        Store::is_closed(self, key).map_err(|e| e.to_string())
    }

    fn last_number(&self, key: &SeriesKey) -> Result<u32, String> {
        Store::last_number(self, key).map_err(|e| e.to_string())
    }
}

impl Store {
    /// Creates a new store (or opens an existing one without changing it).
    pub fn create(path: &Path, unit: &str, name: &str) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        Self::configure(&conn)?;
        let epoch = hex::encode(determinism::random_bytes::<16>());
        for (k, v) in [
            ("epoch", epoch.as_str()),
            ("unit", unit),
            ("name", name),
            (RECORD_JSON.0, RECORD_JSON.1),
        ] {
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
                params![k, v],
            )?;
        }
        let store = Self::from_conn(conn, path)?;
        store.migrate()?;
        Ok(store)
    }

    /// Opens an initialised store.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::NotInitialised {
                path: path.display().to_string(),
            });
        }
        let conn = Connection::open(path)?;
        Self::configure(&conn)?;
        let store = Self::from_conn(conn, path)?;
        store.migrate()?;
        Ok(store)
    }

    /// Stores written before the current form of the JSON kept with each record (the
    /// lifecycle, attachments, deletion conflicts) get every record's JSON written
    /// afresh, once, and its policy columns with it (whether a note stays in its unit
    /// depends on how its visibility is read).
    fn migrate_record_json(&self) -> Result<(), StoreError> {
        if read_meta(&self.conn, RECORD_JSON.0)?.as_deref() == Some(RECORD_JSON.1) {
            return Ok(());
        }
        let ids: Vec<String> = self
            .conn
            .prepare("SELECT id FROM records")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let tx = self.conn.unchecked_transaction()?;
        for id in ids {
            let id = DocId::parse(&id)?;
            // A record that no longer reads keeps the JSON it had.
            let Some((json, header)) = self.load(&id)?.and_then(|doc| {
                Some((
                    model::to_json(&id, &doc).ok()?,
                    model::read_header(&doc).ok()?,
                ))
            }) else {
                continue;
            };
            let audience = serde_json::to_string(&header.audience).expect("strings serialise");
            // A record whose reach changed gets a new seq, so that sessions offer it
            // (or hold it back) afresh.
            let reach: (String, bool) = tx.query_row(
                "SELECT audience, confidential FROM records WHERE id = ?1",
                [id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if reach != (audience.clone(), header.confidential) {
                let seq: i64 = tx.query_row(
                    "SELECT MAX(COALESCE(MAX(seq), 0) + 1, ?1) FROM records",
                    [determinism::now_micros() as i64],
                    |r| r.get(0),
                )?;
                tx.execute(
                    "UPDATE records SET seq = ?2 WHERE id = ?1",
                    params![id.as_str(), seq],
                )?;
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('last_seq', ?1)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [seq.to_string()],
                )?;
            }
            tx.execute(
                "UPDATE records SET json = ?2, audience = ?3, confidential = ?4 WHERE id = ?1",
                params![id.as_str(), json.to_string(), audience, header.confidential],
            )?;
            index_attachments(&tx, &id, &json)?;
        }
        write_meta(&tx, RECORD_JSON.0, RECORD_JSON.1)?;
        tx.commit()?;
        Ok(())
    }

    /// A throw-away store, for tests and simulations.
    pub fn in_memory(unit: &str) -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        let epoch = hex::encode(determinism::random_bytes::<16>());
        for (k, v) in [("epoch", epoch.as_str()), ("unit", unit), ("name", unit)] {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                params![k, v],
            )?;
        }
        let store = Self::from_conn(conn, Path::new(":memory:"))?;
        store.migrate()?;
        Ok(store)
    }

    fn configure(conn: &Connection) -> Result<(), StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        Ok(())
    }

    /// Brings an older store's derived tables up to date (each step once): the JSON
    /// kept with each record, then the search index built from it.
    fn migrate(&self) -> Result<(), StoreError> {
        self.migrate_record_json()?;
        migrate_search_index(&self.conn)
    }

    fn from_conn(conn: Connection, path: &Path) -> Result<Store, StoreError> {
        let get = |k: &str| read_meta(&conn, k);
        let (Some(epoch), Some(unit), Some(name)) = (get("epoch")?, get("unit")?, get("name")?)
        else {
            return Err(StoreError::NotInitialised {
                path: path.display().to_string(),
            });
        };
        let role = get("role")?;
        let max_seq: u64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM records", [], |r| {
            r.get::<_, i64>(0)
        })? as u64;
        let (changed, _) = watch::channel(max_seq);
        Ok(Store {
            conn,
            cache: LruCache::new(NonZeroUsize::new(DEFAULT_CACHE_DOCUMENTS).expect("non-zero")),
            info: StoreInfo {
                epoch,
                unit,
                name,
                role,
            },
            changed,
            batch_depth: 0,
            batch_touched: HashSet::new(),
            batch_max_seq: 0,
            data_version: 0,
            others_wrote_before_batch: false,
            blobs: None,
        })
    }

    /// Drops the cache if another connection committed since we last looked, so a
    /// document written by another process is never served or extended from a stale copy.
    /// Returns whether it had to.
    fn notice_other_writers(&mut self) -> Result<bool, StoreError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if version == self.data_version {
            return Ok(false);
        }
        self.data_version = version;
        self.cache.clear();
        Ok(true)
    }

    /// Bounds how many loaded documents stay in memory.
    /// Gives the store the attachment files of its data directory, so views of a
    /// document can say which of its files are here.
    pub fn set_blobs(&mut self, blobs: std::sync::Arc<crate::blobs::Blobs>) {
        self.blobs = Some(blobs);
    }

    pub fn blobs(&self) -> Option<&std::sync::Arc<crate::blobs::Blobs>> {
        self.blobs.as_ref()
    }

    pub fn set_cache_capacity(&mut self, documents: usize) {
        self.cache
            .resize(NonZeroUsize::new(documents.max(1)).expect("at least one"));
    }

    pub fn info(&self) -> &StoreInfo {
        &self.info
    }

    /// Records what the store was created for, once; a store never changes role.
    pub fn set_role(&mut self, role: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('role', ?1)",
            [role],
        )?;
        if self.info.role.is_none() {
            self.info.role = Some(role.to_string());
        }
        Ok(())
    }

    pub fn epoch(&self) -> &str {
        &self.info.epoch
    }

    /// Wakes whoever waits for new local changes (sync sessions); carries the latest seq.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The highest seq handed out so far.
    pub fn max_seq(&self) -> Result<u64, StoreError> {
        let last: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(last.and_then(|s| s.parse().ok()).unwrap_or(0))
    }

    /// Runs `f` inside one transaction: every write it makes commits together (one disk
    /// sync), or none does.
    pub fn batch<R, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&mut Store) -> Result<R, E>,
    ) -> Result<R, E> {
        self.begin().map_err(E::from)?;
        match f(self) {
            Ok(r) => {
                self.commit().map_err(E::from)?;
                Ok(r)
            }
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        if self.batch_depth == 0 {
            // IMMEDIATE takes the write lock at once, so two processes sharing a store
            // (a server and an import) never interleave sequence numbers.
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.others_wrote_before_batch = match self.notice_other_writers() {
                Ok(wrote) => wrote,
                Err(e) => {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    return Err(e);
                }
            };
            self.batch_touched.clear();
            self.batch_max_seq = 0;
        }
        self.batch_depth += 1;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.batch_depth -= 1;
        if self.batch_depth == 0 {
            if let Err(e) = self.conn.execute_batch("COMMIT") {
                self.batch_depth = 1;
                self.rollback();
                return Err(e.into());
            }
            self.batch_touched.clear();
            if self.batch_max_seq > 0 {
                self.changed.send_replace(self.batch_max_seq);
            }
        }
        Ok(())
    }

    fn rollback(&mut self) {
        self.batch_depth -= 1;
        if self.batch_depth == 0 {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "rollback failed");
            }
            for id in self.batch_touched.drain() {
                self.cache.pop(&id);
            }
        }
    }

    fn next_seq(&mut self) -> Result<u64, StoreError> {
        let now = determinism::now_micros();
        let seq = (self.max_seq()? + 1).max(now);
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('last_seq', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [seq.to_string()],
        )?;
        self.batch_max_seq = self.batch_max_seq.max(seq);
        Ok(seq)
    }

    pub fn contains(&self, id: &DocId) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM records WHERE id = ?1", [id.as_str()], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    /// The loaded document, from the cache or the database.
    pub fn get(&mut self, id: &DocId) -> Result<Option<&Automerge>, StoreError> {
        if self.batch_depth == 0 {
            self.notice_other_writers()?;
        }
        if !self.cache.contains(id) {
            match self.load(id)? {
                Some(doc) => {
                    self.cache.put(id.clone(), doc);
                }
                None => return Ok(None),
            }
        }
        Ok(self.cache.get(id))
    }

    /// Takes a document out of the cache (loading it if needed) for modification; give it
    /// back with [`Store::put`].
    pub fn take(&mut self, id: &DocId) -> Result<Option<Automerge>, StoreError> {
        if self.batch_depth == 0 {
            self.notice_other_writers()?;
        }
        match self.cache.pop(id) {
            Some(doc) => Ok(Some(doc)),
            None => self.load(id),
        }
    }

    /// Puts a document back into the cache without writing it (it was not changed).
    pub fn untake(&mut self, id: DocId, doc: Automerge) {
        self.cache.put(id, doc);
    }

    fn load(&self, id: &DocId) -> Result<Option<Automerge>, StoreError> {
        let snapshot: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT snapshot FROM records WHERE id = ?1",
                [id.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        let Some(snapshot) = snapshot else {
            return Ok(None);
        };
        let corrupt = |reason| StoreError::Corrupt {
            id: id.clone(),
            reason: Box::new(reason),
        };
        let mut doc = Automerge::load(&snapshot)
            .map_err(corrupt)?
            .with_actor(model::fresh_actor());
        let mut stmt = self
            .conn
            .prepare_cached("SELECT data FROM chunks WHERE record = ?1 ORDER BY n")?;
        let chunks = stmt.query_map([id.as_str()], |r| r.get::<_, Vec<u8>>(0))?;
        for chunk in chunks {
            doc.load_incremental(&chunk?).map_err(corrupt)?;
        }
        Ok(Some(doc))
    }

    /// Modifies a record in place and stores the change; `f` runs on the loaded document.
    /// Returns `f`'s result and the new seq (`None` if nothing changed).
    pub fn modify<R>(
        &mut self,
        id: &DocId,
        f: impl FnOnce(&mut Automerge) -> Result<R, ModelError>,
    ) -> Result<(R, Option<u64>), StoreError> {
        let mut doc = self
            .take(id)?
            .ok_or_else(|| StoreError::NotFound(id.clone()))?;
        let before = doc.get_heads();
        // On any error the modified copy is dropped; the next access reloads the stored one.
        let r = f(&mut doc)?;
        let seq = self.put(id, doc, &before)?;
        Ok((r, seq))
    }

    /// Stores `doc` under `id`: as a new record, or as the changes made since `before`
    /// (the heads it had when it was taken). Returns the new seq, `None` if unchanged.
    pub fn put(
        &mut self,
        id: &DocId,
        mut doc: Automerge,
        before: &[ChangeHash],
    ) -> Result<Option<u64>, StoreError> {
        self.begin()?;
        let result = self.put_in_transaction(id, &mut doc, before);
        match result {
            Ok(seq) => {
                self.commit()?;
                self.cache.put(id.clone(), doc);
                Ok(seq)
            }
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    fn put_in_transaction(
        &mut self,
        id: &DocId,
        doc: &mut Automerge,
        before: &[ChangeHash],
    ) -> Result<Option<u64>, StoreError> {
        // Inside the write lock: if another process wrote since `doc` was loaded, fold
        // its version in (a CRDT merge loses nothing) before writing ours.
        if self.batch_depth == 1
            && self.others_wrote_before_batch
            && let Some(mut stored) = self.load(id)?
        {
            stored.merge(doc).map_err(|reason| StoreError::Corrupt {
                id: id.clone(),
                reason: Box::new(reason),
            })?;
            *doc = stored;
        }
        let old = self.meta(id)?;
        let exists = old.is_some();
        if exists && doc.get_heads() == before {
            return Ok(None);
        }
        let old_reach = old.map(|m| (m.header.audience, m.header.confidential));
        let header = model::read_header(doc)?;
        let json = model::to_json(id, doc)?;
        let deleted = model::is_deleted(doc);
        let target = (header.kind == Kind::Annotation)
            .then(|| model::annotation_target(doc).map(|t| t.to_string()))
            .flatten();

        self.batch_touched.insert(id.clone());
        {
            let seq = self.next_seq()?;
            let audience = serde_json::to_string(&header.audience).expect("strings serialise");
            if exists {
                let chunk = doc.save_after(before);
                let (snapshot_bytes, chunk_bytes): (i64, i64) = self.conn.query_row(
                    "SELECT snapshot_bytes, chunk_bytes FROM records WHERE id = ?1",
                    [id.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                let chunk_bytes = chunk_bytes as usize + chunk.len();
                if chunk_bytes > MIN_COMPACTION_BYTES && chunk_bytes > snapshot_bytes as usize {
                    let snapshot = doc.save();
                    self.conn
                        .execute("DELETE FROM chunks WHERE record = ?1", [id.as_str()])?;
                    self.conn.execute(
                        "UPDATE records SET snapshot = ?2, snapshot_bytes = ?3, chunk_bytes = 0
                         WHERE id = ?1",
                        params![id.as_str(), snapshot, snapshot.len() as i64],
                    )?;
                } else {
                    self.conn.execute(
                        "INSERT INTO chunks (record, n, data) VALUES (?1,
                           (SELECT COALESCE(MAX(n), 0) + 1 FROM chunks WHERE record = ?1), ?2)",
                        params![id.as_str(), chunk],
                    )?;
                    self.conn.execute(
                        "UPDATE records SET chunk_bytes = ?2 WHERE id = ?1",
                        params![id.as_str(), chunk_bytes as i64],
                    )?;
                }
                self.conn.execute(
                    "UPDATE records SET kind = ?2, unit = ?3, audience = ?4, confidential = ?5,
                       target = ?6, deleted = ?7, seq = ?8, json = ?9 WHERE id = ?1",
                    params![
                        id.as_str(),
                        header.kind.as_str(),
                        header.unit,
                        audience,
                        header.confidential,
                        target,
                        deleted,
                        seq as i64,
                        json.to_string()
                    ],
                )?;
            } else {
                let snapshot = doc.save();
                self.conn.execute(
                    "INSERT INTO records (id, kind, unit, audience, confidential, target, deleted,
                       seq, snapshot, snapshot_bytes, json)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        id.as_str(),
                        header.kind.as_str(),
                        header.unit,
                        audience,
                        header.confidential,
                        target,
                        deleted,
                        seq as i64,
                        snapshot,
                        snapshot.len() as i64,
                        json.to_string()
                    ],
                )?;
            }
            self.index_for_search(id, &json)?;
            self.index_attachments(id, &json)?;
            let reach = (header.audience.clone(), header.confidential);
            if header.kind == Kind::Document && old_reach.is_some_and(|old| old != reach) {
                self.renumber_annotations(id)?;
            }
            Ok(Some(seq))
        }
    }

    /// Keeps `attachment_refs` in step with the attachments a record lists: which files
    /// this store wants, and which records make a file visible to a peer.
    fn index_attachments(&self, id: &DocId, json: &Json) -> Result<(), StoreError> {
        index_attachments(&self.conn, id, json)
    }

    /// Attachment files this store lists but does not hold yet, in (hash, size) order
    /// after `after` (at most `limit`), each with the records that list it.
    pub fn wanted_attachments(
        &self,
        after: (&str, u64),
        limit: usize,
    ) -> Result<Vec<(String, u64, Vec<RecordMeta>)>, StoreError> {
        let rows: Vec<(String, i64)> = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT hash, size FROM attachment_refs
                 WHERE held = 0 AND (hash > ?1 OR (hash = ?1 AND size > ?2))
                 ORDER BY hash, size LIMIT ?3",
            )?
            .query_map(params![after.0, after.1 as i64, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (hash, size) in rows {
            let records = self.attachment_records(&hash, size as u64)?;
            out.push((hash, size as u64, records));
        }
        Ok(out)
    }

    /// Marks as not held every file `here` says is not on disk (a data directory
    /// restored without its attachments, say), so that it is fetched again.
    pub fn recheck_held_attachments(
        &self,
        here: impl Fn(&str, u64) -> bool,
    ) -> Result<u64, StoreError> {
        let held: Vec<(String, i64)> = self
            .conn
            .prepare("SELECT DISTINCT hash, size FROM attachment_refs WHERE held = 1")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut lost = 0;
        let tx = self.conn.unchecked_transaction()?;
        for (hash, size) in held {
            if !here(&hash, size as u64) {
                tx.execute(
                    "UPDATE attachment_refs SET held = 0 WHERE hash = ?1 AND size = ?2",
                    params![hash, size],
                )?;
                lost += 1;
            }
        }
        tx.commit()?;
        Ok(lost)
    }

    /// Notes that the file came to this store from `unit` (an upload: this store's own).
    pub fn attachment_source(&self, hash: &str, size: u64, unit: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO attachment_sources (hash, size, unit) VALUES (?1, ?2, ?3)",
            params![hash, size as i64, unit],
        )?;
        Ok(())
    }

    /// Whether the file came to this store from `unit`.
    pub fn attachment_came_from(
        &self,
        hash: &str,
        size: u64,
        unit: &str,
    ) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT 1 FROM attachment_sources WHERE hash = ?1 AND size = ?2 AND unit = ?3",
            )?
            .query_row(params![hash, size as i64, unit], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// How many listed attachment files are not here yet.
    pub fn wanted_attachment_count(&self) -> Result<u64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(DISTINCT hash) FROM attachment_refs WHERE held = 0",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Notes that the file for `hash` is complete here.
    pub fn attachment_held(&self, hash: &str, size: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE attachment_refs SET held = 1 WHERE hash = ?1 AND size = ?2",
            params![hash, size as i64],
        )?;
        Ok(())
    }

    /// The records that list the attachment `hash` of `size` bytes.
    pub fn attachment_records(&self, hash: &str, size: u64) -> Result<Vec<RecordMeta>, StoreError> {
        let ids: Vec<String> = self
            .conn
            .prepare_cached("SELECT record FROM attachment_refs WHERE hash = ?1 AND size = ?2")?
            .query_map(params![hash, size as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(meta) = self.meta(&DocId::parse(&id)?)? {
                out.push(meta);
            }
        }
        Ok(out)
    }

    fn index_for_search(&self, id: &DocId, json: &Json) -> Result<(), StoreError> {
        index_for_search(&self.conn, id, json)
    }

    /// Gives every annotation of `target` a new seq. Whether a peer may see a note depends
    /// on its document, so when the document's audience or secrecy changes, its notes are
    /// offered again and each session decides afresh: a note held back while the
    /// document was hidden from a peer goes out once the document is shared again.
    fn renumber_annotations(&mut self, target: &DocId) -> Result<(), StoreError> {
        for note in self.annotations_of(target)? {
            let seq = self.next_seq()?;
            self.conn.execute(
                "UPDATE records SET seq = ?2 WHERE id = ?1",
                params![note.as_str(), seq as i64],
            )?;
        }
        Ok(())
    }

    /// Records changed after `after`, oldest change first, with what the policy needs.
    pub fn changed_since(&self, after: u64, limit: usize) -> Result<Vec<RecordMeta>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, seq, kind, unit, audience, confidential, deleted, target FROM records
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after as i64, limit as i64], meta_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?.into_meta()?);
        }
        Ok(out)
    }

    /// Every record in id order, with what the policy needs and its heads (as the JSON
    /// array kept with it): the catalog that two stores reconcile.
    pub fn catalog(&self) -> Result<Vec<(RecordMeta, String)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, seq, kind, unit, audience, confidential, deleted, target,
                    coalesce(json_extract(json, '$.heads'), '') FROM records ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| Ok((meta_row(r)?, r.get::<_, String>(8)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (meta, heads) = row?;
            out.push((meta.into_meta()?, heads));
        }
        Ok(out)
    }

    /// What the policy needs of one record, from its columns, without loading it.
    pub fn meta(&self, id: &DocId) -> Result<Option<RecordMeta>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, seq, kind, unit, audience, confidential, deleted, target FROM records
             WHERE id = ?1",
        )?;
        match stmt.query_row([id.as_str()], meta_row).optional()? {
            Some(row) => Ok(Some(row.into_meta()?)),
            None => Ok(None),
        }
    }

    /// How many records the store holds.
    pub fn count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM records", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    /// A page of records (of one kind, or all) as JSON, ordered by id; `after` is the last id of the
    /// previous page. `query` keeps only documents matching a full-text search.
    pub fn list(
        &self,
        kind: Option<Kind>,
        after: Option<&DocId>,
        limit: usize,
        include_deleted: bool,
    ) -> Result<Vec<Json>, StoreError> {
        self.list_filtered(kind, after, limit, include_deleted, &ListFilter::default())
    }

    /// [`Store::list`], keeping only the documents in a lifecycle state or direction.
    pub fn list_filtered(
        &self,
        kind: Option<Kind>,
        after: Option<&DocId>,
        limit: usize,
        include_deleted: bool,
        filter: &ListFilter<'_>,
    ) -> Result<Vec<Json>, StoreError> {
        let after = after.map(DocId::as_str).unwrap_or("");
        self.jsons_where(
            "SELECT json FROM records
             WHERE (?1 IS NULL OR kind = ?1) AND id > ?2 AND (?3 OR deleted = 0)
               AND (?5 IS NULL OR json_extract(json, '$.state') = ?5)
               AND (?6 IS NULL OR coalesce(json_extract(json, '$.direction'), 'outgoing') = ?6)
             ORDER BY id LIMIT ?4",
            params![
                kind.map(Kind::as_str),
                after,
                include_deleted,
                limit as i64,
                filter.state,
                filter.direction
            ],
        )
    }

    /// The JSON kept with a record (as of its last stored change).
    pub fn stored_json(&self, id: &DocId) -> Result<Option<Json>, StoreError> {
        Ok(self
            .jsons_where("SELECT json FROM records WHERE id = ?1", [id.as_str()])?
            .pop())
    }

    /// The units a document held here was dispatched to (`None` if it was not).
    pub fn dispatch_of(&self, id: &DocId) -> Result<Option<Vec<String>>, StoreError> {
        let text: Option<Option<String>> = self
            .conn
            .prepare_cached(
                "SELECT json_extract(json, '$.dispatch.to') FROM records WHERE id = ?1",
            )?
            .query_row([id.as_str()], |r| r.get(0))
            .optional()?;
        Ok(text
            .flatten()
            .and_then(|t| serde_json::from_str::<Vec<String>>(&t).ok()))
    }

    fn jsons_where(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Json>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(args, |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(
                serde_json::from_str(&row?)
                    .map_err(|e| StoreError::BadMeta(format!("stored JSON: {e}")))?,
            );
        }
        Ok(out)
    }

    fn ids_where(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<DocId>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(args, |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(DocId::parse(&row?)?);
        }
        Ok(out)
    }

    /// Documents matching `query`, best first (FTS5's BM25 rank over subject, number
    /// and notation, body and annotations, weighted in that order), after skipping
    /// `offset`: each with its stored JSON and the annotations that matched. A note
    /// counts only if `may_read_note` says the reader may read it (its stored JSON is
    /// given). Returns whether more results follow.
    pub fn search(
        &self,
        query: &str,
        may_read_note: &dyn Fn(&Json) -> bool,
        include_deleted: bool,
        filter: &ListFilter<'_>,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<crate::search::Hit>, bool), StoreError> {
        let expr = fts_query(query);
        if expr.is_empty() {
            return Ok((Vec::new(), false));
        }
        let mut hits: Vec<crate::search::Hit> = Vec::new();
        // Where each document found is in `hits`.
        let mut found: HashMap<String, usize> = HashMap::new();
        let mut refused: HashSet<String> = HashSet::new();
        let wanted = offset.saturating_add(limit);
        // Rows are read in ranked slices (ties broken by row, so every page sees the
        // same order) until the page, and one more, is filled: most searches look at the
        // first slice only.
        let slice = (4 * (wanted + 1)).max(256);
        let mut rows: Vec<(String, String, f64)> = Vec::new();
        let mut read = 0;
        let mut next = 0;
        loop {
            if next == rows.len() {
                if hits.len() > wanted || read >= crate::search::MAX_MATCHES {
                    break;
                }
                rows = self
                    .conn
                    .prepare_cached(
                        "SELECT record, document, bm25(fulltext, 0, 0, 10.0, 8.0, 1.0, 2.0)
                           AS rank
                         FROM fulltext WHERE fulltext MATCH ?1 ORDER BY rank, rowid
                         LIMIT ?2 OFFSET ?3",
                    )?
                    .query_map(params![expr, slice as i64, read as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect::<Result<_, _>>()?;
                next = 0;
                read += rows.len();
                if rows.is_empty() {
                    break;
                }
            }
            let (record, document, rank) = rows[next].clone();
            next += 1;
            let known = found.get(&document).copied();
            if refused.contains(&document) || (known.is_none() && hits.len() > wanted) {
                continue;
            }
            let note = if record != document {
                match self.stored_json(&DocId::parse(&record)?)? {
                    Some(n) if n["deleted"] != true && may_read_note(&n) => Some(n),
                    _ => continue,
                }
            } else {
                None
            };
            if let Some(at) = known {
                hits[at].notes.extend(note);
                continue;
            }
            let doc = self.stored_json(&DocId::parse(&document)?)?;
            let fits = doc.as_ref().is_some_and(|d| {
                d["kind"] == "document"
                    && (include_deleted || d["deleted"] != true)
                    && filter.state.is_none_or(|s| d["state"] == s)
                    && filter
                        .direction
                        .is_none_or(|dir| d["direction"].as_str().unwrap_or("outgoing") == dir)
            });
            match doc.filter(|_| fits) {
                Some(d) => {
                    found.insert(document, hits.len());
                    hits.push(crate::search::Hit {
                        document: d,
                        rank,
                        notes: note.into_iter().collect(),
                    })
                }
                None => {
                    refused.insert(document);
                }
            }
        }
        let more = hits.len() > wanted;
        let page = hits.into_iter().skip(offset).take(limit).collect();
        Ok((page, more))
    }

    /// Documents that wait for a person's decision: a field with two values set at once,
    /// or a deletion with edits it had not seen (see `model::deletion_conflict`).
    pub fn conflicted(&self) -> Result<Vec<DocId>, StoreError> {
        self.ids_where(
            "SELECT id FROM records WHERE kind = 'document'
               AND (json_extract(json, '$.deletion_conflict') IS NOT NULL
                    OR json_extract(json, '$.conflicts') NOT IN ('{}', ''))
             ORDER BY id",
            [],
        )
    }

    /// Other documents that hold the same number as one with `number_key` (see
    /// `lifecycle`): duplicates to show, never to merge.
    /// Deleted documents do not count here: deleting a mistaken copy clears the flag.
    pub fn same_number(&self, id: &DocId, number_key: &str) -> Result<Vec<DocId>, StoreError> {
        self.ids_where(
            "SELECT id FROM records WHERE json_extract(json, '$.number_key') = ?1
               AND id != ?2 AND deleted = 0 ORDER BY id",
            params![number_key, id.as_str()],
        )
    }

    /// The highest number held in a register series of its unit (given by a registrar
    /// or written on an imported document), counting deleted documents (a number is
    /// never given twice) and a closed year's last number.
    pub fn last_number(&self, key: &SeriesKey) -> Result<u32, StoreError> {
        let series = key.as_string();
        let given: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT MAX(CAST(json_extract(json, '$.numbering.number') AS INTEGER))
                 FROM records WHERE json_extract(json, '$.numbering.key') = ?1 AND unit = ?2",
            )?
            .query_row([series.as_str(), key.unit.as_str()], |r| r.get(0))?;
        let closed: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT MAX(CAST(json_extract(json, '$.last_number') AS INTEGER)) FROM records
                 WHERE kind = 'register' AND json_extract(json, '$.series_key') = ?1
                   AND unit = ?2",
            )?
            .query_row([series.as_str(), key.unit.as_str()], |r| r.get(0))?;
        Ok(given
            .unwrap_or(0)
            .max(closed.unwrap_or(0))
            .clamp(0, u32::MAX as i64) as u32)
    }

    /// Whether the registrar closed a register series' year.
    pub fn is_closed(&self, key: &SeriesKey) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM records WHERE kind = 'register'
                   AND json_extract(json, '$.series_key') = ?1 AND unit = ?2)",
            )?
            .query_row([key.as_string(), key.unit.clone()], |r| r.get(0))?)
    }

    /// The documents of `unit` waiting for a number from the registrar, oldest first.
    pub fn awaiting_number(&self, unit: &str) -> Result<Vec<DocId>, StoreError> {
        self.ids_where(
            "SELECT id FROM records WHERE unit = ?1
               AND json_extract(json, '$.state') = 'awaiting_number'
             ORDER BY json_extract(json, '$.number_request.at'), id",
            [unit],
        )
    }

    /// Documents of other units dispatched to `unit`.
    pub fn dispatched_to(&self, unit: &str) -> Result<Vec<DocId>, StoreError> {
        self.ids_where(
            "SELECT id FROM records AS d WHERE json_extract(json, '$.dispatch.at') IS NOT NULL
               AND unit != ?1
               AND EXISTS (SELECT 1 FROM json_each(d.json, '$.dispatch.to') WHERE value = ?1)
               AND NOT EXISTS (SELECT 1 FROM records AS i
                 WHERE json_extract(i.json, '$.source.document') = d.id AND i.unit = ?1)
             ORDER BY id",
            [unit],
        )
    }

    /// The incoming documents that refer to the dispatched document `source`.
    pub fn incoming_of(&self, source: &DocId) -> Result<Vec<Json>, StoreError> {
        self.jsons_where(
            "SELECT json FROM records WHERE json_extract(json, '$.source.document') = ?1
             ORDER BY unit",
            [source.as_str()],
        )
    }

    /// The entries of one register series, by number (the JSON of each numbered
    /// document, deleted ones too, since their numbers stay given).
    pub fn register_entries(&self, key: &SeriesKey) -> Result<Vec<Json>, StoreError> {
        self.jsons_where(
            "SELECT json FROM records
             WHERE json_extract(json, '$.numbering.key') = ?1 AND unit = ?2
             ORDER BY CAST(json_extract(json, '$.numbering.number') AS INTEGER), id",
            params![key.as_string(), key.unit],
        )
    }

    /// Every register series of `unit` this store holds numbers or a closing for.
    pub fn register_series(&self, unit: &str) -> Result<Vec<SeriesSummary>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT key, MIN(series), MIN(body), MIN(year), SUM(n), MAX(closed) FROM (
               SELECT json_extract(json, '$.numbering.key') AS key,
                      json_extract(json, '$.numbering.series') AS series,
                      json_extract(json, '$.numbering.body') AS body,
                      json_extract(json, '$.numbering.year') AS year, 1 AS n, 0 AS closed
                 FROM records WHERE unit = ?1
                   AND json_extract(json, '$.numbering.key') IS NOT NULL
               UNION ALL
               SELECT json_extract(json, '$.series_key'), json_extract(json, '$.series'),
                      json_extract(json, '$.body'), json_extract(json, '$.year'), 0, 1
                 FROM records WHERE unit = ?1 AND kind = 'register')
             GROUP BY key ORDER BY MIN(year), MIN(series), MIN(body)",
        )?;
        let rows = stmt.query_map([unit], |r| {
            Ok(SeriesSummary {
                series: r.get(1)?,
                body: r.get(2)?,
                year: r.get(3)?,
                numbers: r.get::<_, i64>(4)? as u64,
                closed: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Ids of the annotations that point at `target`.
    pub fn annotations_of(&self, target: &DocId) -> Result<Vec<DocId>, StoreError> {
        self.ids_where(
            "SELECT id FROM records WHERE target = ?1 ORDER BY id",
            [target.as_str()],
        )
    }

    pub fn peer(&self, peer: &str) -> Result<PeerRecord, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT epoch, cursor, delivered, last_sync FROM peers WHERE peer = ?1",
                [peer],
                |r| {
                    Ok(PeerRecord {
                        epoch: r.get(0)?,
                        cursor: r.get::<_, i64>(1)? as u64,
                        delivered: r.get::<_, i64>(2)? as u64,
                        last_sync: r.get(3)?,
                    })
                },
            )
            .optional()?
            .unwrap_or_default())
    }

    /// Every peer this store has synced with.
    pub fn peers(&self) -> Result<Vec<(String, PeerRecord)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT peer FROM peers ORDER BY peer")?;
        let ids: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        ids.into_iter()
            .map(|id| Ok((id.clone(), self.peer(&id)?)))
            .collect()
    }

    /// Records that the peer's store (epoch `epoch`) has been received up to `cursor`.
    pub fn set_peer_cursor(
        &mut self,
        peer: &str,
        epoch: &str,
        cursor: u64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO peers (peer, epoch, cursor, last_sync) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(peer) DO UPDATE SET epoch = excluded.epoch, cursor = excluded.cursor,
               last_sync = excluded.last_sync",
            params![peer, epoch, cursor as i64, model::now_vietnam()],
        )?;
        Ok(())
    }

    /// Records that everything of ours up to `seq` is on the peer.
    pub fn set_delivered(&mut self, peer: &str, seq: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO peers (peer, delivered, last_sync) VALUES (?1, ?2, ?3)
             ON CONFLICT(peer) DO UPDATE SET delivered = excluded.delivered,
               last_sync = excluded.last_sync",
            params![peer, seq as i64, model::now_vietnam()],
        )?;
        Ok(())
    }

    /// The signed rosters this store keeps, one per issuer: `(issuer, version, signed)`.
    /// The store keeps them as given; `roster` checks them.
    pub fn rosters(&self) -> Result<Vec<(String, u64, Vec<u8>)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT issuer, version, signed FROM rosters ORDER BY issuer")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Keeps `signed` as the issuer's roster if it is newer than the one kept; returns
    /// whether it was.
    pub fn put_roster(
        &self,
        issuer: &str,
        version: u64,
        signed: &[u8],
    ) -> Result<bool, StoreError> {
        let changed = self.conn.execute(
            "INSERT INTO rosters (issuer, version, signed) VALUES (?1, ?2, ?3)
             ON CONFLICT(issuer) DO UPDATE SET version = excluded.version, signed = excluded.signed
             WHERE excluded.version > rosters.version",
            params![issuer, version as i64, signed],
        )?;
        Ok(changed > 0)
    }

    /// The persisted part of the automerge sync state with `peer` for one record.
    pub fn sync_state(&self, peer: &str, id: &DocId) -> Result<sync::State, StoreError> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT state FROM sync_states WHERE peer = ?1 AND record = ?2",
                params![peer, id.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        // A state that does not decode is only an optimisation lost: start afresh.
        Ok(bytes
            .and_then(|b| sync::State::decode(&b).ok())
            .unwrap_or_default())
    }

    /// Drops every sync state kept for `peer` (its store was re-created).
    pub fn forget_sync_states(&self, peer: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM sync_states WHERE peer = ?1", [peer])?;
        Ok(())
    }

    pub fn save_sync_state(
        &self,
        peer: &str,
        id: &DocId,
        state: &sync::State,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO sync_states (peer, record, state) VALUES (?1, ?2, ?3)
             ON CONFLICT(peer, record) DO UPDATE SET state = excluded.state",
            params![peer, id.as_str(), state.encode()],
        )?;
        Ok(())
    }
}

/// Indexes a record's searchable text under a number of its own (`search_keys`, whose
/// integer key SQLite keeps through VACUUM): the index's `record` column is not indexed,
/// so a lookup by it would scan the whole index.
/// Keeps `attachment_refs` in step with the attachments a record lists: which files
/// this store wants, and which records make a file visible to a peer.
fn index_attachments(conn: &Connection, id: &DocId, json: &Json) -> Result<(), StoreError> {
    let listed = model::attachments_in_json(json);
    // Whether each file is held, read before this record's rows go: a file only this
    // record lists stays held.
    let mut held = Vec::with_capacity(listed.len());
    for a in &listed {
        held.push(
            conn.prepare_cached(
                "SELECT COALESCE(MAX(held), 0) FROM attachment_refs WHERE hash = ?1 AND size = ?2",
            )?
            .query_row(params![a.hash, a.size as i64], |r| r.get::<_, i64>(0))?,
        );
    }
    conn.prepare_cached("DELETE FROM attachment_refs WHERE record = ?1")?
        .execute([id.as_str()])?;
    for (a, held) in listed.iter().zip(held) {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO attachment_refs (hash, record, size, held)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![a.hash, id.as_str(), a.size as i64, held])?;
    }
    Ok(())
}

fn index_for_search(conn: &Connection, id: &DocId, json: &Json) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT OR IGNORE INTO search_keys (record) VALUES (?1)")?
        .execute([id.as_str()])?;
    let n: i64 = conn
        .prepare_cached("SELECT n FROM search_keys WHERE record = ?1")?
        .query_row([id.as_str()], |r| r.get(0))?;
    conn.prepare_cached("DELETE FROM fulltext WHERE rowid = ?1")?
        .execute([n])?;
    let text = |keys: &[&str]| {
        let mut out = String::new();
        for key in keys {
            if let Some(s) = json[*key].as_str() {
                out.push_str(s);
                out.push('\n');
            }
        }
        fold_for_search(&out)
    };
    let (document, subject, refs, body, notes) = match json["kind"].as_str() {
        Some("document") => (
            id.as_str().to_string(),
            text(&["type", "subject"]),
            text(&["number", "notation", "issuer"]),
            text(&["body"]),
            String::new(),
        ),
        Some("annotation") if json["deleted"] != true => {
            let Some(target) = json["target"].as_str() else {
                return Ok(());
            };
            let mut notes = text(&["text"]);
            for reply in json["replies"].as_array().into_iter().flatten() {
                if let Some(t) = reply["text"].as_str() {
                    notes.push_str(&fold_for_search(t));
                    notes.push('\n');
                }
            }
            (
                target.to_string(),
                String::new(),
                String::new(),
                String::new(),
                notes,
            )
        }
        _ => return Ok(()),
    };
    conn.prepare_cached(
        "INSERT INTO fulltext (rowid, record, document, subject, refs, body, notes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        n,
        id.as_str(),
        document,
        subject,
        refs,
        body,
        notes
    ])?;
    Ok(())
}

/// Stores whose search index was built otherwise (keyed by record id, or one column
/// for everything) get it rebuilt once from the records' JSON.
fn migrate_search_index(conn: &Connection) -> Result<(), StoreError> {
    const KEY: &str = "search_index";
    const VERSION: &str = "fields";
    if read_meta(conn, KEY)?.as_deref() == Some(VERSION) {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch("DROP TABLE IF EXISTS search")?;
    tx.execute("DELETE FROM fulltext", [])?;
    tx.execute("DELETE FROM search_keys", [])?;
    {
        let mut stmt = tx.prepare("SELECT id, json FROM records")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (id, json) = row?;
            let json: Json = serde_json::from_str(&json).unwrap_or(Json::Null);
            index_for_search(&tx, &DocId::parse(&id)?, &json)?;
        }
    }
    write_meta(&tx, KEY, VERSION)?;
    tx.commit()?;
    Ok(())
}

fn read_meta(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

fn write_meta(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// The columns of `records` that make a [`RecordMeta`], as read.
struct MetaRow {
    id: String,
    seq: i64,
    kind: String,
    unit: String,
    audience: String,
    confidential: bool,
    deleted: bool,
    target: Option<String>,
}

fn meta_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MetaRow> {
    Ok(MetaRow {
        id: r.get(0)?,
        seq: r.get(1)?,
        kind: r.get(2)?,
        unit: r.get(3)?,
        audience: r.get(4)?,
        confidential: r.get(5)?,
        deleted: r.get(6)?,
        target: r.get(7)?,
    })
}

impl MetaRow {
    fn into_meta(self) -> Result<RecordMeta, StoreError> {
        let id = self.id;
        let bad = |what: &str| StoreError::BadMeta(format!("record {id}: {what}"));
        Ok(RecordMeta {
            id: DocId::parse(&id).map_err(|_| bad("id"))?,
            seq: self.seq as u64,
            header: Header {
                kind: Kind::parse(&self.kind).ok_or_else(|| bad("kind"))?,
                unit: self.unit,
                audience: serde_json::from_str(&self.audience).map_err(|_| bad("audience"))?,
                created_by: String::new(),
                created_at: String::new(),
                confidential: self.confidential,
            },
            deleted: self.deleted,
            target: match self.target {
                Some(t) => Some(DocId::parse(&t).map_err(|_| bad("target"))?),
                None => None,
            },
        })
    }
}

/// Folds text for search so that `quyet dinh` finds `Quyết định`, whether either side is
/// composed (NFC) or decomposed (NFD): the text is decomposed and its combining marks
/// dropped, and `đ`, a letter of its own in Unicode rather than `d` with a mark, is folded
/// to `d`. The same folding runs before indexing and before querying.
pub fn fold_for_search(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    use unicode_normalization::char::is_combining_mark;
    text.nfd()
        .filter(|c| !is_combining_mark(*c))
        .map(|c| match c {
            'đ' | 'Đ' => 'd',
            c => c,
        })
        .collect()
}

/// Turns what a clerk typed into an FTS5 expression: every word must match a word of
/// the text, the last one as a prefix (it may be still being typed). Quotes keep FTS5
/// syntax characters from being interpreted.
fn fts_query(q: &str) -> String {
    let words: Vec<String> = crate::search::query_words(q);
    let last = words.len().saturating_sub(1);
    words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == last {
                format!("\"{w}\"*")
            } else {
                format!("\"{w}\"")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DocumentPatch;

    fn header() -> Header {
        Header {
            kind: Kind::Document,
            unit: "18562".into(),
            audience: vec!["18562".into()],
            created_by: "t".into(),
            created_at: model::now_vietnam(),
            confidential: false,
        }
    }

    /// What a search for `q` finds, read by anyone.
    fn found(s: &Store, q: &str) -> Result<Vec<crate::search::Hit>, StoreError> {
        let all = |_: &Json| true;
        Ok(s.search(q, &all, false, &ListFilter::default(), 0, 10)?.0)
    }

    fn new_doc(body: &str) -> Automerge {
        model::create_document(
            &header(),
            &DocumentPatch {
                subject: Some("Quyết định về đê điều".into()),
                body: Some(body.into()),
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn a_series_counts_numbers_written_on_imports_and_only_its_own_units_records() {
        use crate::lifecycle::{Series, SeriesKey};
        let mut s = Store::in_memory("18562").unwrap();
        let year = &model::now_vietnam()[..4];
        let numbered = |unit: &str, number: &str, issuer: &str| {
            let h = Header {
                unit: unit.into(),
                audience: vec![unit.into(), "18562".into()],
                ..header()
            };
            model::create_document(
                &h,
                &DocumentPatch {
                    number: Some(number.into()),
                    imported: true,
                    notation: Some("QĐ-UBND".into()),
                    issuer: Some(issuer.into()),
                    issued_date: Some(format!("{year}-03-02")),
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let key = SeriesKey {
            unit: "18562".into(),
            series: Series::Outgoing,
            body: "UBND xã Thạch Hà".into(),
            year: year.parse().unwrap(),
        };
        let first = DocId::new();
        s.put(&first, numbered("18562", "05", "UBND Xã Thạch  Hà"), &[])
            .unwrap();
        // The same issuer however it is written, and an imported number counts.
        assert_eq!(s.last_number(&key).unwrap(), 5);
        // Another unit's record naming the same body and number is not in this register.
        s.put(
            &DocId::new(),
            numbered("18568", "40", "UBND xã Thạch Hà"),
            &[],
        )
        .unwrap();
        assert_eq!(s.last_number(&key).unwrap(), 5);
        assert_eq!(s.register_entries(&key).unwrap().len(), 1);
        // A second document holding 05 is a duplicate of the first, until it is deleted.
        let second = DocId::new();
        s.put(&second, numbered("18562", "5", "UBND xã Thạch Hà"), &[])
            .unwrap();
        let key_of = |s: &Store, id: &DocId| {
            s.stored_json(id).unwrap().unwrap()["number_key"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            s.same_number(&first, &key_of(&s, &first)).unwrap(),
            std::slice::from_ref(&second)
        );
        s.modify(&second, |d| model::tombstone(d, "t")).unwrap();
        assert!(
            s.same_number(&first, &key_of(&s, &first))
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.last_number(&key).unwrap(), 5);
    }

    #[test]
    fn a_store_from_before_lifecycles_gets_its_records_json_written_afresh_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let id = DocId::new();
        {
            let mut s = Store::create(&path, "18562", "Xã Thạch Hà").unwrap();
            s.put(&id, new_doc("Điều 1."), &[]).unwrap();
            // As an older version wrote it: no lifecycle in the JSON, no version mark.
            s.conn
                .execute_batch(
                    "UPDATE records SET json = json_remove(json, '$.direction', '$.numbering');
                     DELETE FROM meta WHERE key = 'record_json';",
                )
                .unwrap();
            assert!(
                s.stored_json(&id)
                    .unwrap()
                    .unwrap()
                    .get("direction")
                    .is_none()
            );
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(
            s.stored_json(&id).unwrap().unwrap()["direction"],
            "outgoing"
        );
        let version: String = s
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'record_json'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, RECORD_JSON.1);
    }

    #[test]
    fn records_survive_reopening_with_their_chunks_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let id = DocId::new();
        let expected;
        {
            let mut s = Store::create(&path, "18562", "Xã Thạch Hà").unwrap();
            s.put(&id, new_doc("a"), &[]).unwrap();
            // Enough edits to force at least one compaction.
            for i in 0..400 {
                s.modify(&id, |d| {
                    model::splice_body(d, 0, 0, &format!("{i} {}", "x".repeat(60)))
                })
                .unwrap();
            }
            expected = model::body_text(s.get(&id).unwrap().unwrap()).unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(
            model::body_text(s.get(&id).unwrap().unwrap()).unwrap(),
            expected
        );
        let chunks: i64 = s
            .conn
            .query_row("SELECT COUNT(*) FROM chunks", [], |r| r.get(0))
            .unwrap();
        assert!(chunks < 400, "chunks were never compacted ({chunks})");
    }

    #[test]
    fn two_processes_on_one_store_never_lose_each_others_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let mut server = Store::create(&path, "18562", "Xã Thạch Hà").unwrap();
        let mut import = Store::open(&path).unwrap();
        let id = DocId::new();
        server.put(&id, new_doc("gốc"), &[]).unwrap();
        server.get(&id).unwrap();

        // The other process edits; the server's cached copy is now stale.
        import
            .modify(&id, |d| model::splice_body(d, 0, 0, "import "))
            .unwrap();
        assert_eq!(
            model::body_text(server.get(&id).unwrap().unwrap()).unwrap(),
            "import gốc"
        );

        // The server takes the document, the other process writes meanwhile, then the
        // server stores its edit: both survive.
        let mut doc = server.take(&id).unwrap().unwrap();
        let before = doc.get_heads();
        import
            .modify(&id, |d| model::splice_body(d, 0, 0, "B "))
            .unwrap();
        model::splice_body(&mut doc, 10, 0, " A").unwrap();
        server.put(&id, doc, &before).unwrap();
        let mut fresh = Store::open(&path).unwrap();
        assert_eq!(
            model::body_text(fresh.get(&id).unwrap().unwrap()).unwrap(),
            "B import gốc A"
        );
    }

    #[test]
    fn seqs_increase_and_changed_since_lists_each_record_once() {
        let mut s = Store::in_memory("18562").unwrap();
        let a = DocId::new();
        let b = DocId::new();
        let sa = s.put(&a, new_doc("a"), &[]).unwrap().unwrap();
        let sb = s.put(&b, new_doc("b"), &[]).unwrap().unwrap();
        assert!(sb > sa);
        let (_, sa2) = s.modify(&a, |d| model::splice_body(d, 0, 0, "x")).unwrap();
        let changed: Vec<_> = s
            .changed_since(0, 10)
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(changed, vec![b.clone(), a.clone()]);
        assert_eq!(s.changed_since(sa2.unwrap(), 10).unwrap().len(), 0);
        assert_eq!(s.changed_since(sb, 10).unwrap().len(), 1);
    }

    #[test]
    fn a_failed_batch_leaves_nothing_behind() {
        let mut s = Store::in_memory("18562").unwrap();
        let a = DocId::new();
        let r: Result<(), StoreError> = s.batch(|s| {
            s.put(&a, new_doc("a"), &[])?;
            Err(StoreError::BadMeta("stop".into()))
        });
        assert!(r.is_err());
        assert!(!s.contains(&a).unwrap());
        assert!(s.get(&a).unwrap().is_none());
    }

    #[test]
    fn an_edited_document_is_found_by_its_new_words_only_and_old_indexes_are_rebuilt() {
        // (VACUUM, which an operator may run, renumbers tables without an integer key.)
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut s = Store::create(&path, "18562", "A").unwrap();
        let a = DocId::new();
        s.put(&a, new_doc("đê điều"), &[]).unwrap();
        s.modify(&a, |d| model::splice_body(d, 0, 0, "hồ chứa "))
            .unwrap();
        let hits = |s: &Store, q: &str| found(s, q).unwrap().len();
        assert_eq!(hits(&s, "ho chua"), 1);
        assert_eq!(hits(&s, "de dieu"), 1);
        // A store whose index rows were keyed otherwise: rebuilt once on opening.
        s.conn
            .execute_batch(
                "DELETE FROM meta WHERE key = 'search_index';
                 CREATE VIRTUAL TABLE search USING fts5(record UNINDEXED, text);
                 INSERT INTO search (rowid, record, text) VALUES (999, 'stale', 'ho chua');
                 INSERT INTO fulltext (rowid, record, document, body)
                   VALUES (999, 'stale', 'stale', 'ho chua');
                 VACUUM;",
            )
            .unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(hits(&s, "ho chua"), 1);
        let rows: i64 = s
            .conn
            .query_row("SELECT COUNT(*) FROM fulltext", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
        let old: i64 = s
            .conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'search'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old, 0, "the index of the old form is gone");
    }

    #[test]
    fn a_held_file_stays_held_through_edits_until_it_is_gone_from_disk() {
        let mut s = Store::in_memory("18562").unwrap();
        let id = DocId::new();
        let mut doc = new_doc("Điều 1.");
        let file = model::Attachment {
            hash: blake3::hash(b"scan").to_hex().to_string(),
            name: "scan.pdf".into(),
            size: 4,
            media_type: "application/pdf".into(),
            added_by: None,
            added_at: None,
            added_on: None,
        };
        model::add_attachment(&mut doc, &file).unwrap();
        s.put(&id, doc, &[]).unwrap();
        assert_eq!(s.wanted_attachment_count().unwrap(), 1);
        s.attachment_held(&file.hash, 4).unwrap();
        s.modify(&id, |d| model::splice_body(d, 0, 0, "Chương I. "))
            .unwrap();
        assert_eq!(
            s.wanted_attachment_count().unwrap(),
            0,
            "an edit keeps it held"
        );
        assert_eq!(s.recheck_held_attachments(|_, _| true).unwrap(), 0);
        assert_eq!(s.recheck_held_attachments(|_, _| false).unwrap(), 1);
        assert_eq!(s.wanted_attachment_count().unwrap(), 1, "wanted again");
        let (rows, after) = (
            s.wanted_attachments(("", 0), 10).unwrap(),
            (file.hash.as_str(), 4),
        );
        assert_eq!(rows.len(), 1);
        assert!(
            s.wanted_attachments(after, 10).unwrap().is_empty(),
            "the cursor moves on"
        );
        // Where a file came from is remembered, by unit.
        s.attachment_source(&file.hash, 4, "18568").unwrap();
        assert!(s.attachment_came_from(&file.hash, 4, "18568").unwrap());
        assert!(!s.attachment_came_from(&file.hash, 4, "18562").unwrap());
    }

    #[test]
    fn a_search_ranks_subjects_first_and_finds_notes_only_for_their_readers() {
        let mut s = Store::in_memory("18562").unwrap();
        let in_subject = DocId::new();
        s.put(&in_subject, new_doc("Điều 1."), &[]).unwrap();
        let in_body = DocId::new();
        let mut doc = new_doc("Giao Ban quản lý đê điều kiểm tra.");
        model::update_document(
            &mut doc,
            &DocumentPatch {
                subject: Some("Kế hoạch năm 2026".into()),
                notation: Some("KH-UBND".into()),
                ..Default::default()
            },
        )
        .unwrap();
        s.put(&in_body, doc, &[]).unwrap();
        let all = |_: &Json| true;
        let (hits, more) = s
            .search("de dieu", &all, false, &ListFilter::default(), 0, 10)
            .unwrap();
        assert!(!more);
        let ids: Vec<&str> = hits
            .iter()
            .map(|h| h.document["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            [in_subject.as_str(), in_body.as_str()],
            "subject before body"
        );
        assert!(hits[0].rank < hits[1].rank);
        // The notation is searched too, and paging goes on from an offset.
        let (hits, _) = s
            .search("kh-ubnd", &all, false, &ListFilter::default(), 0, 10)
            .unwrap();
        assert_eq!(hits.len(), 1);
        let (page, more) = s
            .search("de", &all, false, &ListFilter::default(), 0, 1)
            .unwrap();
        assert!(more && page.len() == 1);
        let (rest, more) = s
            .search("de", &all, false, &ListFilter::default(), 1, 1)
            .unwrap();
        assert!(!more && rest[0].document["id"] != page[0].document["id"]);

        // A private note's words find its document for the note's reader only.
        let mut h = header();
        h.kind = Kind::Annotation;
        let note = model::create_annotation(
            &h,
            &in_body,
            s.get(&in_body).unwrap().unwrap(),
            &model::NewAnnotation {
                text: "cần bổ sung kinh phí".into(),
                anchor: None,
                visibility: model::Visibility::Private,
                shared_with: vec![],
                author: Some("chu.tich".into()),
            },
        )
        .unwrap();
        s.put(&DocId::new(), note, &[]).unwrap();
        let reader = |name| Some(model::Reader { name, node: "t" });
        let author = |n: &Json| model::may_read_annotation(n, reader("chu.tich"));
        let other = |n: &Json| model::may_read_annotation(n, reader("van.thu"));
        let f = ListFilter::default();
        let (hits, _) = s.search("kinh phi", &author, false, &f, 0, 10).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].notes.len(), 1);
        assert!(
            s.search("kinh phi", &other, false, &f, 0, 10)
                .unwrap()
                .0
                .is_empty()
        );
    }

    #[test]
    fn search_ignores_diacritics_and_d_with_stroke() {
        let mut s = Store::in_memory("18562").unwrap();
        let a = DocId::new();
        s.put(&a, new_doc("nội dung"), &[]).unwrap();
        let decomposed = "Quye\u{302}\u{301}t đi\u{323}nh";
        for q in [
            "quyet dinh",
            "Quyết định",
            "đê",
            "de dieu",
            "QUYET",
            decomposed,
        ] {
            let hits = found(&s, q).unwrap();
            assert_eq!(hits.len(), 1, "query {q:?}");
        }
        assert!(found(&s, "nghị quyết").unwrap().is_empty());
        // A body stored decomposed is found by a composed query, and a query of symbols
        // alone finds nothing.
        let b = DocId::new();
        s.put(&b, new_doc("Vie\u{302}\u{323}t Nam"), &[]).unwrap();
        let hits = found(&s, "Việt");
        assert_eq!(hits.unwrap().len(), 1);
        for q in ["\"", "🙂", "…"] {
            let hits = found(&s, q);
            assert!(hits.unwrap().is_empty(), "query {q:?}");
        }
        // FTS5 syntax in a query is taken literally, never as an error.
        assert!(found(&s, "\"AND OR*(").is_ok());
    }
}
