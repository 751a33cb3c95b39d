//! The sync protocol as a sans-IO state machine: messages in, messages and store writes
//! out. No sockets and no clocks live here, so the whole protocol runs in tests against
//! in-memory stores; `net` carries the messages over iroh.
//!
//! One [`Session`] runs per connection between two peers, symmetrically on both sides:
//!
//! 1. **Hello**: each side announces its store epoch, unit and role, and the cursor it
//!    holds for the other side's store.
//! 2. **Catch-up**: each side walks its own records changed since the cursor the peer
//!    holds (or all records, if the peer's cursor belongs to another epoch), skipping
//!    those the policy keeps from the peer, and starts the automerge sync protocol for
//!    each, with a bounded number of records in flight.
//! 3. **Per record**: automerge sync messages, with the sync state kept per peer and
//!    record (its durable part persisted in the store).
//! 4. **Acknowledge**: a record counts as delivered only when the peer's own reply shows
//!    heads equal to ours; the peer sends that reply only after it has committed what it
//!    received. When every record up to seq N is delivered, the sender says `Progress
//!    { seq: N }` and the receiver stores N as its cursor.
//! 5. **Live**: after catch-up, new local changes are offered the same way as they
//!    happen (the driver calls [`Session::poll_local`] when the store changes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::Automerge;
use automerge::sync::{self, SyncDoc};
use lru::LruCache;
use serde::{Deserialize, Serialize};

use crate::model::{self, DocId};
use crate::policy::{self, Member, Role};
use crate::store::{Store, StoreError};
use crate::units::UnitCode;

/// The ALPN that identifies Cabinet's sync protocol on an iroh connection.
pub const ALPN: &[u8] = b"cabinet/sync/2";

/// Version carried in Hello; a peer with another version is refused with a message.
pub const PROTOCOL_VERSION: u16 = 2;

/// The largest frame either side sends or accepts.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Records a session keeps in flight (offered, not yet confirmed) before it stops
/// scanning for more.
pub const DEFAULT_WINDOW: usize = 256;

/// Per-record sync states a session keeps in memory; older ones are persisted and
/// dropped, so a session over 100,000 records stays small.
const SYNC_STATES_IN_MEMORY: usize = 8192;

/// How many records one scan of the store reads at a time.
const SCAN_BATCH: usize = 512;

/// Signed rosters a peer may hand us in one session; more is a fault.
const MAX_ROSTERS_PER_SESSION: usize = 64;

/// What the cursor a peer holds for our store looks like on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: String,
    pub seq: u64,
}

/// Which version of an issuer's signed roster a side holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterVersion {
    /// The issuer's node id.
    pub issuer: String,
    pub version: u64,
}

/// A signed roster this side holds, as a session offers it to peers below its issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterOffer {
    pub version: RosterVersion,
    /// The issuer's unit: the roster goes to peers whose unit lies in its subtree.
    pub unit: UnitCode,
    pub signed: Vec<u8>,
}

/// One protocol message; each travels in one length-prefixed frame, encoded with
/// postcard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Hello {
        version: u16,
        epoch: String,
        unit: String,
        role: Role,
        /// The cursor the sender holds for the receiver's store, if any.
        cursor: Option<Cursor>,
        /// The signed rosters the sender holds.
        rosters: Vec<RosterVersion>,
    },
    /// An automerge sync message for one record.
    Sync {
        record: String,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Everything the sender stored up to `seq` (sender's numbering, sender's epoch) is
    /// now committed on the receiver. `pending` counts records the sender still has to
    /// offer, for status pages.
    Progress {
        epoch: String,
        seq: u64,
        pending: u64,
    },
    /// The sender did not keep the changes it was sent for this record (the policy
    /// refused them): the receiver must not count the record as delivered.
    Refused { record: String },
    /// A signed roster newer than the one the receiver announced (see `roster`); the
    /// receiver's driver checks it against the keys it trusts.
    Roster {
        #[serde(with = "serde_bytes")]
        signed: Vec<u8>,
    },
    /// Catalog reconciliation, when the sender holds no valid cursor for the receiver's
    /// store (see [`catalog`]).
    Catalog {
        salt: catalog::Salt,
        ranges: Vec<catalog::CatalogRange>,
    },
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("messages always serialise")
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, ProtocolError> {
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(ProtocolError::FrameTooLarge(bytes.len()));
        }
        postcard::from_bytes(bytes).map_err(|e| ProtocolError::Malformed(e.to_string()))
    }
}

/// Faults that end a session. None of them touches the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("frame of {0} bytes exceeds the limit")]
    FrameTooLarge(usize),
    #[error("peer speaks protocol version {0}, this build speaks {PROTOCOL_VERSION}")]
    Version(u16),
    #[error("message before hello")]
    NoHello,
    #[error("second hello")]
    DuplicateHello,
    #[error("no hello within {0:?} of connecting")]
    HelloTimeout(std::time::Duration),
    #[error("peer announced unit {announced} as a {role}, the roster says {expected}")]
    WrongUnit {
        announced: String,
        role: &'static str,
        expected: String,
    },
    #[error("peer announced itself as a {announced}, it was configured as a {expected}")]
    WrongRole {
        announced: &'static str,
        expected: &'static str,
    },
    #[error("peer announced an unknown unit {0:?}")]
    UnknownUnit(String),
    #[error("progress for epoch {0}, but the peer's store is epoch {1}")]
    WrongEpoch(String, String),
    #[error("bad record id in a sync message")]
    BadRecordId,
    #[error("more than {MAX_ROSTERS_PER_SESSION} rosters in one session")]
    TooManyRosters,
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error("undecodable automerge sync message for {record}: {reason}")]
    BadSyncMessage { record: DocId, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counters a session keeps for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub messages_in: u64,
    pub messages_out: u64,
    pub records_stored: u64,
    pub changes_refused: u64,
}

/// One side of a sync session with one peer.
pub struct Session {
    peer_id: String,
    me: Member,
    /// Known before Hello when the peer is on the roster; from its Hello otherwise.
    peer: Option<Member>,
    their_epoch: Option<String>,
    hello_received: bool,
    /// Our records up to this seq have been scanned for this peer.
    scanned: u64,
    /// Offered and not yet confirmed, by our seq.
    pending: BTreeMap<u64, DocId>,
    pending_seq: HashMap<DocId, u64>,
    /// Records the peer refused in this session; offered again only when they change here.
    refused_by_peer: HashSet<DocId>,
    states: LruCache<DocId, sync::State>,
    progress_sent: u64,
    /// How many records the peer said it still has for us.
    pending_in: u64,
    window: usize,
    stats: SessionStats,
    /// The signed rosters we hold, and the versions the peer said it holds.
    rosters: Vec<RosterOffer>,
    peer_rosters: HashMap<String, u64>,
    /// Signed rosters the peer sent, for the driver to check.
    received_rosters: Vec<Vec<u8>>,
    rosters_received: usize,
    /// Our records the peer may see, reconciled with the peer's when either side lacks a
    /// cursor for the other's store.
    catalog: Option<catalog::Catalog>,
    /// Our scan waits until our catalog questions are answered, then skips what the
    /// peer holds alike.
    scan_waits_for_catalog: bool,
    /// Whether we hold back another unit's record from a peer that holds none of it (it
    /// would refuse it); tests turn this off to play a node that forges such records.
    holds_back_foreign: bool,
    /// For a peer without a roster entry: the role the operator configured it with.
    configured_role: Option<Role>,
}

impl Session {
    /// A session with `peer_id`; `peer` is its roster entry, if it has one.
    pub fn new(me: Member, peer_id: String, peer: Option<Member>) -> Session {
        Session {
            peer_id,
            me,
            peer,
            their_epoch: None,
            hello_received: false,
            scanned: 0,
            pending: BTreeMap::new(),
            pending_seq: HashMap::new(),
            refused_by_peer: HashSet::new(),
            states: LruCache::new(NonZeroUsize::new(SYNC_STATES_IN_MEMORY).expect("non-zero")),
            progress_sent: 0,
            pending_in: 0,
            window: DEFAULT_WINDOW,
            stats: SessionStats::default(),
            rosters: Vec::new(),
            peer_rosters: HashMap::new(),
            received_rosters: Vec::new(),
            rosters_received: 0,
            catalog: None,
            scan_waits_for_catalog: false,
            holds_back_foreign: true,
            configured_role: None,
        }
    }

    /// A peer without a roster entry must announce the role it was configured with (a
    /// `--peer` node may not pass itself off as a relay).
    pub fn expect_role(&mut self, role: Role) {
        self.configured_role = Some(role);
    }

    /// Plays a node that sends other units' records to peers that do not hold them.
    #[cfg(test)]
    pub(crate) fn send_foreign_records(&mut self) {
        self.holds_back_foreign = false;
    }

    /// The signed rosters we hold. Once the peer has said Hello, returns those it lacks
    /// (its unit below their issuer, its version older), for sending at once.
    pub fn set_rosters(&mut self, rosters: Vec<RosterOffer>) -> Vec<Message> {
        self.rosters = rosters;
        let out = self.rosters_for_peer();
        self.stats.messages_out += out.len() as u64;
        out
    }

    /// The peer holds this version of an issuer's roster (it sent it to us).
    pub fn peer_has_roster(&mut self, version: &RosterVersion) {
        let held = self.peer_rosters.entry(version.issuer.clone()).or_default();
        *held = (*held).max(version.version);
    }

    /// Signed rosters the peer sent since the last call, unchecked.
    pub fn take_received_rosters(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.received_rosters)
    }

    fn rosters_for_peer(&mut self) -> Vec<Message> {
        let Some(peer) = self.peer.clone().filter(|_| self.hello_received) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for offer in &self.rosters {
            let below = peer.unit.path_to_root().contains(&offer.unit);
            let held = self.peer_rosters.get(&offer.version.issuer).copied();
            if below && held.is_none_or(|v| v < offer.version.version) {
                out.push(Message::Roster {
                    signed: offer.signed.clone(),
                });
                self.peer_rosters
                    .insert(offer.version.issuer.clone(), offer.version.version);
            }
        }
        out
    }

    pub fn set_window(&mut self, window: usize) {
        self.window = window.max(1);
    }

    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// The peer's unit and role, once known.
    pub fn peer(&self) -> Option<&Member> {
        self.peer.as_ref()
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Records offered to the peer and not yet confirmed.
    pub fn pending_out(&self) -> usize {
        self.pending.len()
    }

    /// Records the peer said it still has to offer us.
    pub fn pending_in(&self) -> u64 {
        self.pending_in
    }

    /// Has the peer said Hello?
    pub fn has_hello(&self) -> bool {
        self.hello_received
    }

    /// Has the initial catch-up in both directions finished (nothing in flight)?
    pub fn is_idle(&self) -> bool {
        self.hello_received
            && self.pending.is_empty()
            && self.pending_in == 0
            && self
                .catalog
                .as_ref()
                .is_none_or(catalog::Catalog::is_settled)
    }

    /// The first message: Hello with the cursor we hold for the peer's store.
    pub fn start(&mut self, store: &Store) -> Result<Vec<Message>, ProtocolError> {
        let record = store.peer(&self.peer_id)?;
        let cursor = record.epoch.map(|epoch| Cursor {
            epoch,
            seq: record.cursor,
        });
        self.stats.messages_out += 1;
        Ok(vec![Message::Hello {
            version: PROTOCOL_VERSION,
            epoch: store.epoch().to_string(),
            unit: self.me.unit.to_string(),
            role: self.me.role,
            cursor,
            rosters: self.rosters.iter().map(|r| r.version.clone()).collect(),
        }])
    }

    /// Handles one message from the peer. Writes go to `store`; the caller sends the
    /// returned messages only after the store has committed (see [`Store::batch`]).
    pub fn handle(
        &mut self,
        store: &mut Store,
        message: Message,
    ) -> Result<Vec<Message>, ProtocolError> {
        self.stats.messages_in += 1;
        let mut out = Vec::new();
        match message {
            Message::Hello {
                version,
                epoch,
                unit,
                role,
                cursor,
                rosters,
            } => {
                self.on_hello(store, version, epoch, unit, role, cursor)?;
                for r in &rosters {
                    self.peer_has_roster(r);
                }
                out.extend(self.rosters_for_peer());
                if self.scanned == 0 && store.max_seq()? > 0 {
                    // The peer holds no cursor for us: rather than offer every record,
                    // find those it already holds alike.
                    let catalog = self.catalog(store)?;
                    if !catalog.is_empty() {
                        let salt = crate::determinism::random_bytes::<16>();
                        let ranges = catalog.start(salt)?;
                        self.scan_waits_for_catalog = true;
                        out.push(Message::Catalog { salt, ranges });
                    }
                }
            }
            Message::Catalog { salt, ranges } => {
                if !self.hello_received {
                    return Err(ProtocolError::NoHello);
                }
                let answers = self.catalog(store)?.handle(&salt, ranges)?;
                for chunk in answers.chunks(catalog::MAX_RANGES_PER_MESSAGE) {
                    out.push(Message::Catalog {
                        salt,
                        ranges: chunk.to_vec(),
                    });
                }
            }
            Message::Roster { signed } => {
                if !self.hello_received {
                    return Err(ProtocolError::NoHello);
                }
                self.rosters_received += 1;
                if self.rosters_received > MAX_ROSTERS_PER_SESSION {
                    return Err(ProtocolError::TooManyRosters);
                }
                self.received_rosters.push(signed);
            }
            Message::Sync { record, data } => {
                if !self.hello_received {
                    return Err(ProtocolError::NoHello);
                }
                let id = DocId::parse(&record).map_err(|_| ProtocolError::BadRecordId)?;
                self.on_sync(store, id, &data, &mut out)?;
            }
            Message::Refused { record } => {
                if !self.hello_received {
                    return Err(ProtocolError::NoHello);
                }
                let id = DocId::parse(&record).map_err(|_| ProtocolError::BadRecordId)?;
                if let Some(seq) = self.pending_seq.remove(&id) {
                    self.pending.remove(&seq);
                    tracing::warn!(peer = %short(&self.peer_id), record = %id,
                        "the peer refused a record it was offered");
                    self.refused_by_peer.insert(id.clone());
                    self.states.pop(&id);
                }
            }
            Message::Progress {
                epoch,
                seq,
                pending,
            } => {
                let theirs = self.their_epoch.clone().ok_or(ProtocolError::NoHello)?;
                if epoch != theirs {
                    return Err(ProtocolError::WrongEpoch(epoch, theirs));
                }
                store.set_peer_cursor(&self.peer_id, &epoch, seq)?;
                self.pending_in = pending;
            }
        }
        self.fill(store, &mut out)?;
        self.progress(store, &mut out)?;
        self.stats.messages_out += out.len() as u64;
        Ok(out)
    }

    /// Offers records changed locally since the last scan.
    pub fn poll_local(&mut self, store: &mut Store) -> Result<Vec<Message>, ProtocolError> {
        let mut out = Vec::new();
        self.fill(store, &mut out)?;
        self.progress(store, &mut out)?;
        self.stats.messages_out += out.len() as u64;
        Ok(out)
    }

    fn on_hello(
        &mut self,
        store: &mut Store,
        version: u16,
        epoch: String,
        unit: String,
        role: Role,
        cursor: Option<Cursor>,
    ) -> Result<(), ProtocolError> {
        if self.hello_received {
            return Err(ProtocolError::DuplicateHello);
        }
        if version != PROTOCOL_VERSION {
            return Err(ProtocolError::Version(version));
        }
        match &self.peer {
            Some(member) => {
                if member.unit.as_str() != unit || member.role != role {
                    return Err(ProtocolError::WrongUnit {
                        announced: unit,
                        role: role.as_str(),
                        expected: format!("{} ({})", member.unit, member.role.as_str()),
                    });
                }
            }
            None => {
                if let Some(expected) = self.configured_role
                    && expected != role
                {
                    return Err(ProtocolError::WrongRole {
                        announced: role.as_str(),
                        expected: expected.as_str(),
                    });
                }
                let unit =
                    UnitCode::parse(&unit).map_err(|_| ProtocolError::UnknownUnit(unit.clone()))?;
                self.peer = Some(Member { unit, role });
            }
        }
        // A new epoch means the peer's store was re-created: what we knew of it is void,
        // the heads we thought we shared with it included.
        let known = store.peer(&self.peer_id)?;
        if known.epoch.as_deref() != Some(epoch.as_str()) {
            store.set_peer_cursor(&self.peer_id, &epoch, 0)?;
            store.forget_sync_states(&self.peer_id)?;
        }
        // Where to start offering our records: after the cursor the peer holds for us, if
        // it belongs to this store's epoch and does not claim more than we ever numbered.
        let max_seq = store.max_seq()?;
        self.scanned = match cursor {
            Some(c) if c.epoch == store.epoch() && c.seq <= max_seq => c.seq,
            _ => 0,
        };
        self.progress_sent = self.scanned;
        self.their_epoch = Some(epoch);
        self.hello_received = true;
        tracing::debug!(peer = %short(&self.peer_id), from_seq = self.scanned, "hello received");
        Ok(())
    }

    /// Our catalog for this peer, taken from the store the first time it is needed.
    fn catalog(&mut self, store: &Store) -> Result<&mut catalog::Catalog, ProtocolError> {
        if self.catalog.is_none() {
            let peer = self.peer_member()?.clone();
            let mut records = Vec::new();
            for (meta, heads) in store.catalog()? {
                if visible_to(store, &peer, &meta.header, meta.target.as_ref())? {
                    records.push((meta.id, catalog::heads_hash(&heads), meta.seq));
                }
            }
            tracing::debug!(peer = %short(&self.peer_id), records = records.len(),
                "catalog taken for reconciliation");
            self.catalog = Some(catalog::Catalog::new(records));
        }
        Ok(self.catalog.as_mut().expect("just taken"))
    }

    fn peer_member(&self) -> Result<&Member, ProtocolError> {
        self.peer.as_ref().ok_or(ProtocolError::NoHello)
    }

    fn state(&mut self, store: &Store, id: &DocId) -> Result<&mut sync::State, ProtocolError> {
        if !self.states.contains(id) {
            let state = store.sync_state(&self.peer_id, id)?;
            if let Some((old_id, old)) = self.states.push(id.clone(), state)
                && &old_id != id
            {
                // Keep what is worth keeping across sessions before forgetting the rest.
                store_state_later(store, &self.peer_id, &old_id, &old);
            }
        }
        Ok(self.states.get_mut(id).expect("just inserted"))
    }

    /// Scans our records changed since the last scan and offers those the peer may hold,
    /// until the window is full.
    fn fill(&mut self, store: &mut Store, out: &mut Vec<Message>) -> Result<(), ProtocolError> {
        if !self.hello_received {
            return Ok(());
        }
        if self.scan_waits_for_catalog {
            if !self
                .catalog
                .as_ref()
                .is_none_or(catalog::Catalog::is_settled)
            {
                return Ok(());
            }
            self.scan_waits_for_catalog = false;
            if let Some(c) = &self.catalog {
                tracing::debug!(peer = %short(&self.peer_id), records = c.len(),
                    alike = c.alike_count(), "catalog reconciled");
            }
        }
        let peer = self.peer_member()?.clone();
        while self.pending.len() < self.window {
            let batch = store.changed_since(self.scanned, SCAN_BATCH)?;
            if batch.is_empty() {
                break;
            }
            for meta in batch {
                self.scanned = meta.seq;
                if !visible_to(store, &peer, &meta.header, meta.target.as_ref())? {
                    // Possibly in flight from before an audience change: no longer owed.
                    self.delivered(&meta.id);
                    continue;
                }
                if self
                    .catalog
                    .as_ref()
                    .is_some_and(|c| c.is_alike(&meta.id, meta.seq))
                {
                    // The peer holds it as we do: nothing to offer.
                    self.delivered(&meta.id);
                    continue;
                }
                self.refused_by_peer.remove(&meta.id);
                if let Some(old) = self.pending_seq.insert(meta.id.clone(), meta.seq) {
                    self.pending.remove(&old);
                }
                self.pending.insert(meta.seq, meta.id.clone());
                self.offer(store, &meta.id, out)?;
            }
        }
        Ok(())
    }

    /// Generates the next sync message for a record we hold and may show the peer.
    fn offer(
        &mut self,
        store: &mut Store,
        id: &DocId,
        out: &mut Vec<Message>,
    ) -> Result<(), ProtocolError> {
        let Some(doc) = store.take(id)? else {
            self.delivered(id);
            return Ok(());
        };
        let result = self.offer_doc(store, id, &doc, out);
        store.untake(id.clone(), doc);
        result
    }

    fn offer_doc(
        &mut self,
        store: &Store,
        id: &DocId,
        doc: &Automerge,
        out: &mut Vec<Message>,
    ) -> Result<(), ProtocolError> {
        let state = self.state(store, id)?;
        let message = generate(doc, state, id)?;
        let heads_equal = state.their_heads.as_deref() == Some(&doc.get_heads()[..]);
        if let Some(m) = message {
            out.push(Message::Sync {
                record: id.to_string(),
                data: m.encode(),
            });
        }
        if heads_equal {
            self.delivered(id);
        }
        Ok(())
    }

    fn delivered(&mut self, id: &DocId) {
        if let Some(seq) = self.pending_seq.remove(id) {
            self.pending.remove(&seq);
        }
    }

    fn on_sync(
        &mut self,
        store: &mut Store,
        id: DocId,
        data: &[u8],
        out: &mut Vec<Message>,
    ) -> Result<(), ProtocolError> {
        let message = sync::Message::decode(data).map_err(|e| ProtocolError::BadSyncMessage {
            record: id.clone(),
            reason: e.to_string(),
        })?;
        if self.refused_by_peer.contains(&id) {
            if message.heads.is_empty() {
                // The peer refused our last offer of this record and still holds none of
                // it: the exchange rests until the record changes here again.
                return Ok(());
            }
            // The peer holds the record now (it came from elsewhere): an ordinary
            // exchange, in which the peer may take what it refused as a new record.
            self.refused_by_peer.remove(&id);
        }
        let peer = self.peer_member()?.clone();

        // What we hold, as far as this peer may know: a record it may not see is treated
        // exactly like one we do not have, and nothing it sends for it is kept.
        let (mut doc, before_header, before_target, hidden) = match store.take(&id)? {
            Some(doc) => {
                let header = model::read_header(&doc).ok();
                let target = model::annotation_target(&doc);
                let visible = match &header {
                    Some(h) => visible_to(store, &peer, h, target.as_ref())?,
                    None => false,
                };
                if visible {
                    (doc, header, target, false)
                } else {
                    store.untake(id.clone(), doc);
                    (Automerge::new(), None, None, true)
                }
            }
            None => (Automerge::new(), None, None, false),
        };
        let existed = before_header.is_some();
        if let Some(header) = &before_header
            && self.holds_back_foreign
            && message.heads.is_empty()
            && policy::may_accept(&peer, &self.me, None, header).is_err()
        {
            // The peer holds none of the record and would refuse it from us as a new one
            // (another unit's record, from a node): nothing is sent, and the record is
            // not owed to it from here.
            store.untake(id.clone(), doc);
            self.states.pop(&id);
            self.delivered(&id);
            self.refused_by_peer.insert(id);
            return Ok(());
        }
        // Whether `doc` is the store's copy, to be given back to its cache afterwards.
        let mut stored = existed;
        let before = doc.get_heads();
        let state = self.state(store, &id)?;
        let received = catch_unwind(AssertUnwindSafe(|| {
            doc.receive_sync_message(state, message)
        }));
        let failure = match received {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("automerge panicked on this message".to_string()),
        };
        if let Some(reason) = failure {
            if existed {
                // Put the stored version back; the half-applied copy is dropped.
                store.get(&id)?;
            }
            return Err(ProtocolError::BadSyncMessage { record: id, reason });
        }

        if doc.get_heads() != before {
            let held = Held {
                heads: &before,
                header: before_header.as_ref(),
                target: before_target.as_ref(),
            };
            let verdict = self.judge(store, &peer, &id, &doc, &held);
            if let Err(reason) = verdict {
                return self.refuse(store, id, existed, &reason, out);
            }
            if hidden {
                return self.drop_hidden(store, id, doc, out);
            }
            store.put(&id, doc, &before)?;
            self.stats.records_stored += 1;
            let state = self.state(store, &id)?.clone();
            store.save_sync_state(&self.peer_id, &id, &state)?;
            doc = store.take(&id)?.unwrap_or_default();
            stored = true;
        }

        let result = (|| {
            let state = self.state(store, &id)?;
            let reply = generate(&doc, state, &id)?;
            let in_sync = state.their_heads.as_deref() == Some(&doc.get_heads()[..]);
            if let Some(reply) = reply {
                out.push(Message::Sync {
                    record: id.to_string(),
                    data: reply.encode(),
                });
            }
            if in_sync && !doc.get_heads().is_empty() {
                self.delivered(&id);
            }
            Ok(())
        })();
        if stored {
            store.untake(id, doc);
        } else {
            // Nothing of this record is kept here: neither is what this exchange learnt,
            // so requests for records we do not hold (a flood of them, say) leave no state
            // in memory or on disk. A later message starts afresh, which automerge allows.
            self.states.pop(&id);
        }
        result
    }

    /// May the peer's change, which turned our copy (`held`) into `doc`, be kept? The
    /// policy decides on the headers; a note must also stay on its document, and be on
    /// one the peer may see; signatures must verify and receipts come from recipients.
    fn judge(
        &self,
        store: &Store,
        peer: &Member,
        id: &DocId,
        doc: &Automerge,
        held: &Held<'_>,
    ) -> Result<(), String> {
        let (before, before_target) = (held.header, held.target);
        let after = model::read_header(doc).map_err(|e| e.to_string())?;
        model::to_json(id, doc).map_err(|e| e.to_string())?;
        policy::may_accept(&self.me, peer, before, &after).map_err(|r| r.to_string())?;
        // Signatures must verify and stay, and a receipt must come from a recipient.
        // The owning unit's nodes keep another unit's node from stepping their records. Only
        // they judge it: a relay, or a node of a third unit, cannot tell a peer's own change
        // from the owner's changes the peer passes on (to a store that lost them, say), and
        // refusing those would keep copies apart.
        // TODO: with changes signed by their unit, every hop could judge the author
        // rather than the peer.
        let from_other_unit = peer.role == Role::Node
            && self.me.role == Role::Node
            && peer.unit.as_str() != after.unit
            && self.me.unit.as_str() == after.unit;
        crate::lifecycle::check_received(id, doc, held.heads, from_other_unit, |source| {
            store.dispatch_of(source).ok().flatten()
        })?;
        if after.kind == model::Kind::Annotation {
            let target = model::annotation_target(doc);
            if before.is_some() && target.as_ref() != before_target {
                return Err("the change moves the note to another document".into());
            }
            if !visible_to(store, peer, &after, target.as_ref()).map_err(|e| e.to_string())? {
                return Err("the note is on a document the peer may not see".into());
            }
        }
        Ok(())
    }

    /// Drops what a peer sent for a record we hold but may not show it. Whatever the peer
    /// claims in its copy, it never writes into ours: the stored record is untouched.
    /// The reply comes from the copy that received the peer's changes, exactly as it would
    /// for a record new to us, so the peer learns nothing of the one we hold.
    fn drop_hidden(
        &mut self,
        store: &mut Store,
        id: DocId,
        doc: Automerge,
        out: &mut Vec<Message>,
    ) -> Result<(), ProtocolError> {
        tracing::warn!(peer = %short(&self.peer_id), record = %id,
            "dropped changes from a peer to a record it may not see");
        self.stats.changes_refused += 1;
        let state = self.state(store, &id)?;
        let reply = generate(&doc, state, &id)?;
        // Nothing of this exchange is kept, as for any record not held here.
        self.states.pop(&id);
        if let Some(reply) = reply {
            out.push(Message::Sync {
                record: id.to_string(),
                data: reply.encode(),
            });
        }
        Ok(())
    }

    /// Drops a change the policy refused and tells the peer, so it neither counts the
    /// record as delivered nor keeps asking: the stored record is untouched, and the
    /// exchange for it rests until one side changes it again. The session goes on, as the
    /// cause may be an honest race with an audience change.
    fn refuse(
        &mut self,
        store: &mut Store,
        id: DocId,
        existed: bool,
        reason: &str,
        out: &mut Vec<Message>,
    ) -> Result<(), ProtocolError> {
        tracing::warn!(peer = %short(&self.peer_id), record = %id, %reason,
            "refused a change from a peer");
        self.stats.changes_refused += 1;
        // What this state learnt came with the refused change: forget it.
        self.states.pop(&id);
        if existed {
            store.get(&id)?;
        }
        out.push(Message::Refused {
            record: id.to_string(),
        });
        Ok(())
    }

    /// Sends Progress when every record up to a higher seq than last said is delivered.
    fn progress(&mut self, store: &mut Store, out: &mut Vec<Message>) -> Result<(), ProtocolError> {
        if !self.hello_received {
            return Ok(());
        }
        let acked = match self.pending.first_key_value() {
            Some((seq, _)) => seq - 1,
            None => self.scanned,
        };
        if acked > self.progress_sent {
            self.progress_sent = acked;
            store.set_delivered(&self.peer_id, acked)?;
            out.push(Message::Progress {
                epoch: store.epoch().to_string(),
                seq: acked,
                pending: self.pending.len() as u64,
            });
        }
        Ok(())
    }

    /// Persists the durable part of every sync state held in memory, for the records the
    /// store holds, in one transaction; call at session end.
    pub fn persist_states(&mut self, store: &mut Store) -> Result<(), StoreError> {
        let states = &self.states;
        let peer = &self.peer_id;
        store.batch(|store| {
            for (id, state) in states.iter() {
                if store.contains(id)? {
                    store.save_sync_state(peer, id, state)?;
                }
            }
            Ok::<_, StoreError>(())
        })
    }
}

/// May `peer` see a record with this header? An annotation is seen only by those who may
/// see the document it annotates, as this store holds it now: a note never shows a peer
/// that a document it may not see exists, even after the document's audience narrowed.
pub(crate) fn visible_to(
    store: &Store,
    peer: &Member,
    header: &model::Header,
    target: Option<&DocId>,
) -> Result<bool, ProtocolError> {
    if !policy::may_hold(peer, header) {
        return Ok(false);
    }
    let Some(target) = target.filter(|_| header.kind == model::Kind::Annotation) else {
        return Ok(true);
    };
    Ok(match store.meta(target)? {
        Some(document) => policy::may_hold(peer, &document.header),
        None => true,
    })
}

fn store_state_later(store: &Store, peer: &str, id: &DocId, state: &sync::State) {
    if let Err(e) = store.save_sync_state(peer, id, state) {
        tracing::debug!(error = %e, "could not persist an evicted sync state");
    }
}

/// automerge's generator, with a panic (which a malformed earlier message from the peer
/// could provoke) turned into an error that ends only this session.
fn generate(
    doc: &Automerge,
    state: &mut sync::State,
    id: &DocId,
) -> Result<Option<sync::Message>, ProtocolError> {
    catch_unwind(AssertUnwindSafe(|| doc.generate_sync_message(state))).map_err(|_| {
        ProtocolError::BadSyncMessage {
            record: id.clone(),
            reason: "automerge panicked generating a reply".into(),
        }
    })
}

/// The short form of a node id used in logs.
pub fn short(id: &str) -> &str {
    id.get(..10).unwrap_or(id)
}

pub mod catalog;
/// What a store held of a record before a peer's change: its heads (none for a record
/// new here), header and, for a note, the document it is on.
struct Held<'a> {
    heads: &'a [automerge::ChangeHash],
    header: Option<&'a model::Header>,
    target: Option<&'a DocId>,
}

#[cfg(test)]
mod tests;
