//! Carries protocol sessions over iroh QUIC connections.
//!
//! The endpoint runs fully offline: no relay servers, no DNS or pkarr lookups, only the
//! addresses an operator gives (`--peer`, `--relay`, `--upstream`), the connections peers
//! open to us, and, where enabled, peers announced by mDNS on the local network (never
//! beyond it), which are dialled only if the roster admits them. Each connection carries one bidirectional stream of length-prefixed
//! frames, and one [`Session`] on each side.
//!
//! A session's store work runs under the store lock on a blocking-capable thread
//! (`block_in_place`), one batch of ready frames per transaction, and its replies are
//! written only after that transaction has committed.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use iroh::endpoint::{Connection, QuicTransportConfig, VarInt, presets};
use iroh::{Endpoint, EndpointAddr};
pub use iroh::{EndpointId, SecretKey};
use iroh_mdns_address_lookup::{DiscoveryEvent, MdnsAddressLookup};
use tokio::sync::watch;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::blobs::Blobs;
use crate::model;
use crate::policy::{Member, Role};
use crate::protocol::{self, Message, ProtocolError, Session, short};
use crate::roster::{Roster, Trust};
use crate::store::Store;

mod attachments;

/// The mDNS service Cabinet endpoints announce themselves under.
const MDNS_SERVICE: &str = "cabinet";

/// The store shared by the HTTP API and every sync session.
pub type SharedStore = Arc<Mutex<Store>>;

/// Frames read from the socket and handled in one store transaction, at most.
const FRAMES_PER_BATCH: usize = 128;

/// How often a session looks for changes written by another process (an import).
const RESCAN_INTERVAL: Duration = Duration::from_secs(2);

/// The longest wait between two attempts to reach a configured peer.
const MAX_REDIAL: Duration = Duration::from_secs(4);

/// The longest wait between two attempts to reach a peer that closed our previous
/// connections before a session began (it does not know us, or refused our Hello):
/// retrying is right, as its roster may change, but not four times a second.
const MAX_REDIAL_REFUSED: Duration = Duration::from_secs(60);

/// How long a peer found on the LAN may stay unreachable before we dial it only as often
/// as a peer that refuses us.
const QUIET_LAN_PEER: Duration = Duration::from_secs(600);

/// How long a write may wait for the peer to take it.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a shutdown waits for sessions to save their sync states and close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a peer has, once connected, to open its stream and say Hello. A peer that
/// stays silent would otherwise hold a session (and its task) for as long as QUIC's
/// keep-alives keep the connection up.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The length prefix in front of every frame.
const FRAME_PREFIX_BYTES: u64 = 4;

/// QUIC close codes, visible in the peer's logs.
const CLOSE_DONE: u32 = 0;
const CLOSE_NOT_ALLOWED: u32 = 1;
const CLOSE_PROTOCOL: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0:?} is not a peer address: expected NODE_ID@HOST:PORT")]
    BadPeerAddr(String),
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("cannot listen on {addr}: {message}")]
    Bind { addr: String, message: String },
}

/// A peer given on the command line: `NODE_ID@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    pub id: EndpointId,
    pub addr: SocketAddr,
}

impl FromStr for PeerAddr {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetError::BadPeerAddr(s.to_string());
        let (id, host) = s.split_once('@').ok_or_else(bad)?;
        let id = EndpointId::from_str(id).map_err(|_| bad())?;
        let addr = host
            .to_socket_addrs()
            .map_err(|_| NetError::Resolve(host.to_string()))?
            .next()
            .ok_or_else(|| NetError::Resolve(host.to_string()))?;
        Ok(PeerAddr { id, addr })
    }
}

/// What a node or relay needs to take part in sync.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub listen: SocketAddr,
    pub me: Member,
    /// Peers to dial, with the role the operator gave them (`--peer` is a node,
    /// `--relay`/`--upstream` a relay). Their unit comes from the roster or their Hello.
    pub dial: Vec<(PeerAddr, Role)>,
    /// The operator's roster file.
    pub roster: Roster,
    /// Keys trusted to sign rosters (this node's own key is always trusted).
    pub roster_keys: Vec<EndpointId>,
    /// Announce this endpoint and find peers on the local network with mDNS.
    pub mdns: bool,
    /// The attachment files this endpoint serves and fetches.
    pub blobs: Arc<Blobs>,
    /// Bytes per second attachment downloads may take, so a slow line still carries
    /// documents; `None` for no limit.
    pub attachment_rate: Option<u64>,
}

/// What the status page shows of one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PeerStatus {
    pub id: String,
    pub unit: Option<String>,
    pub role: Option<&'static str>,
    pub connected: bool,
    pub last_sync: Option<String>,
    pub pending_out: u64,
    pub pending_in: u64,
    /// Bytes of protocol frames received from and sent to the peer since this process
    /// started (length prefixes included, QUIC overhead not).
    pub bytes_in: u64,
    pub bytes_out: u64,
}

struct Shared {
    endpoint: Endpoint,
    store: SharedStore,
    blobs: Arc<Blobs>,
    attachment_rate: Option<u64>,
    me: Member,
    /// Who may take part: the roster file and the signed rosters held.
    trust: Mutex<Trust>,
    /// Bumped whenever a newer signed roster is taken: sessions pass it on and end
    /// themselves if their peer is no longer admitted.
    roster_changed: watch::Sender<u64>,
    /// Peers dialled by configuration, with the role the operator gave them.
    configured: HashMap<String, Role>,
    /// Peers found by mDNS that we dial, each with the token that stops its dialling.
    discovered: Mutex<HashMap<String, CancellationToken>>,
    status: Mutex<HashMap<String, PeerStatus>>,
    /// Cancelled when the process shuts down: every loop and session ends.
    stopping: CancellationToken,
    /// Every task that runs a loop or a session, so a shutdown can wait for them.
    tasks: TaskTracker,
}

/// The running network side of a node or relay.
pub struct Net {
    shared: Arc<Shared>,
}

impl Net {
    /// Binds the endpoint and starts accepting and dialling.
    pub async fn start(
        secret: SecretKey,
        store: SharedStore,
        config: NetConfig,
    ) -> Result<Net, NetError> {
        let transport = QuicTransportConfig::builder()
            .max_idle_timeout(Duration::from_secs(15).try_into().ok())
            .keep_alive_interval(Duration::from_secs(3))
            .build();
        let bind_err = |message: String| NetError::Bind {
            addr: config.listen.to_string(),
            message,
        };
        let mdns = if config.mdns {
            match MdnsAddressLookup::builder()
                .service_name(MDNS_SERVICE)
                .build(secret.public())
            {
                Ok(m) => Some(m),
                Err(e) => {
                    warn!(error = %e, "mDNS is not available here: no discovery on the LAN");
                    None
                }
            }
        } else {
            None
        };
        let mut builder = Endpoint::builder(presets::Minimal);
        if let Some(m) = &mdns {
            builder = builder.address_lookup(m.clone());
        }
        let endpoint = builder
            .secret_key(secret)
            .alpns(vec![protocol::ALPN.to_vec()])
            .transport_config(transport)
            .clear_ip_transports()
            .bind_addr(config.listen)
            .map_err(|e| bind_err(e.to_string()))?
            .bind()
            .await
            .map_err(|e| bind_err(e.to_string()))?;
        info!(id = %endpoint.id(), addrs = ?endpoint.bound_sockets(), "sync endpoint listening");

        let mut status = HashMap::new();
        let configured: HashMap<String, Role> = config
            .dial
            .iter()
            .map(|(p, role)| (p.id.to_string(), *role))
            .collect();
        for (id, role) in &configured {
            status.insert(
                id.clone(),
                PeerStatus {
                    id: id.clone(),
                    role: Some(role.as_str()),
                    ..Default::default()
                },
            );
        }
        let mut anchors = config.roster_keys.clone();
        anchors.push(endpoint.id());
        let mut trust = Trust::new(anchors, config.roster);
        take_stored_rosters(&store, &mut trust);
        let shared = Arc::new(Shared {
            endpoint,
            store,
            blobs: config.blobs,
            attachment_rate: config.attachment_rate,
            me: config.me,
            trust: Mutex::new(trust),
            roster_changed: watch::channel(0).0,
            configured,
            discovered: Mutex::new(HashMap::new()),
            status: Mutex::new(status),
            stopping: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });

        // Files the store believes held but that are gone from disk are wanted again.
        let lost = tokio::task::block_in_place(|| {
            lock(&shared.store).recheck_held_attachments(|hash, size| {
                crate::blobs::parse_hash(hash)
                    .ok()
                    .and_then(|h| shared.blobs.complete_size(&h))
                    == Some(size)
            })
        });
        match lost {
            Ok(0) => {}
            Ok(n) => warn!(
                files = n,
                "attachment files missing from disk; fetching them again"
            ),
            Err(e) => warn!(error = %e, "could not check the attachment files on disk"),
        }
        shared.tasks.spawn(accept_loop(shared.clone()));
        shared.tasks.spawn(roster_loop(shared.clone()));
        for (peer, _) in config.dial {
            let stop = shared.stopping.clone();
            shared.tasks.spawn(dial_loop(
                shared.clone(),
                peer.id,
                vec![peer.addr],
                stop,
                false,
            ));
        }
        if let Some(m) = mdns {
            info!("announcing this endpoint and looking for peers on the LAN (mDNS)");
            shared.tasks.spawn(mdns_loop(shared.clone(), m));
        }
        Ok(Net { shared })
    }

    /// The attachment files this endpoint serves and fetches.
    pub fn blobs(&self) -> &Arc<Blobs> {
        &self.shared.blobs
    }

    pub fn id(&self) -> EndpointId {
        self.shared.endpoint.id()
    }

    /// The UDP sockets the endpoint listens on.
    pub fn bound_sockets(&self) -> Vec<SocketAddr> {
        self.shared.endpoint.bound_sockets()
    }

    /// Every peer configured or seen, with its sync state.
    pub fn status(&self) -> Vec<PeerStatus> {
        let mut peers: Vec<PeerStatus> = lock(&self.shared.status).values().cloned().collect();
        peers.sort_by(|a, b| a.id.cmp(&b.id));
        peers
    }

    /// The signed rosters held, and the roster file.
    pub fn with_trust<R>(&self, f: impl FnOnce(&Trust) -> R) -> R {
        f(&lock(&self.shared.trust))
    }

    /// Ends every session (each saves its sync states and closes its connection with a
    /// normal code), waits for them a little, and closes the endpoint.
    pub async fn shutdown(&self) {
        self.shared.stopping.cancel();
        self.shared.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.shared.tasks.wait())
            .await
            .is_err()
        {
            warn!("some sync sessions did not end in time");
        }
        self.shared.endpoint.close().await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a lock leaves data that is still consistent here (every
    // store write is transactional), so a poisoned lock is used as it is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn accept_loop(shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            incoming = shared.endpoint.accept() => incoming,
            _ = shared.stopping.cancelled() => return,
        };
        let Some(incoming) = incoming else { return };
        let task_shared = shared.clone();
        let shared = task_shared.clone();
        task_shared.tasks.spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "incoming connection failed");
                    return;
                }
            };
            run_connection(shared, conn, false).await;
        });
    }
}

/// Takes the newer signed rosters kept in the store (received by another process, or
/// published there by `cabinet-relay roster publish`); returns whether any was new.
fn take_stored_rosters(store: &SharedStore, trust: &mut Trust) -> bool {
    let rosters = match lock(store).rosters() {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot read the stored rosters");
            return false;
        }
    };
    let mut changed = false;
    for (issuer, version, bytes) in rosters {
        match trust.accept(&bytes) {
            Ok(Some(r)) => {
                info!(issuer = %r.issuer.fmt_short(), unit = %r.unit, version = r.version,
                    members = r.roster.len(), "roster taken");
                changed = true;
            }
            Ok(None) => {}
            Err(e) => {
                debug!(issuer = %short(&issuer), version, error = %e,
                    "a stored roster is not one this node trusts");
            }
        }
    }
    changed
}

/// Watches the store for rosters published beside the running process.
async fn roster_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(RESCAN_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.stopping.cancelled() => return,
        }
        let changed = tokio::task::block_in_place(|| {
            take_stored_rosters(&shared.store, &mut lock(&shared.trust))
        });
        if changed {
            shared.roster_changed.send_modify(|n| *n += 1);
        }
    }
}

/// Whether a peer may take part now: `Ok(Some)` with its roster entry, `Ok(None)` for a
/// peer the operator configured that no roster names (trusted for the unit it
/// announces), `Err` with the reason it is refused.
fn admission(shared: &Shared, peer_id: &str) -> Result<Option<Member>, &'static str> {
    let trust = lock(&shared.trust);
    if trust.is_revoked(peer_id) {
        return Err("revoked");
    }
    if let Some(member) = trust.member(peer_id) {
        return Ok(Some(member));
    }
    if shared.configured.contains_key(peer_id) {
        return Ok(None);
    }
    Err("not on the roster")
}

/// Dials peers that mDNS finds on the LAN and the roster admits, while they are seen. A
/// peer seen before the roster admitted it is dialled once a newer roster does.
async fn mdns_loop(shared: Arc<Shared>, mdns: MdnsAddressLookup) {
    let mut events = mdns.subscribe().await;
    let mut rosters = shared.roster_changed.subscribe();
    let mut seen: HashMap<EndpointId, Vec<SocketAddr>> = HashMap::new();
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(DiscoveryEvent::Discovered { endpoint_info, .. }) => {
                    let id = endpoint_info.endpoint_id;
                    seen.insert(id, endpoint_info.ip_addrs().copied().collect());
                    dial_discovered(&shared, id, &seen[&id]);
                }
                Some(DiscoveryEvent::Expired { endpoint_id }) => {
                    seen.remove(&endpoint_id);
                    if let Some(stop) = lock(&shared.discovered).remove(&endpoint_id.to_string()) {
                        debug!(peer = %endpoint_id.fmt_short(), "a peer left the LAN");
                        stop.cancel();
                    }
                }
                Some(_) => {}
                None => return,
            },
            _ = rosters.changed() => {
                // Forget the dialling of peers the new roster no longer admits, then dial
                // those it admits now.
                lock(&shared.discovered).retain(|key, stop| {
                    let keep = admission(&shared, key).is_ok_and(|m| m.is_some());
                    if !keep {
                        stop.cancel();
                    }
                    keep
                });
                for (id, addrs) in &seen {
                    dial_discovered(&shared, *id, addrs);
                }
            }
            _ = shared.stopping.cancelled() => return,
        }
    }
}

/// Starts dialling a peer found on the LAN, unless it is us, configured, already being
/// dialled, or not admitted by the roster.
fn dial_discovered(shared: &Arc<Shared>, id: EndpointId, addrs: &[SocketAddr]) {
    let me = shared.endpoint.id();
    let key = id.to_string();
    if id == me || shared.configured.contains_key(&key) {
        return;
    }
    let mut discovered = lock(&shared.discovered);
    if discovered.contains_key(&key) {
        return;
    }
    match admission(shared, &key) {
        Ok(Some(member)) => {
            info!(peer = %short(&key), unit = %member.unit, ?addrs, "found a peer on the LAN");
            let stop = shared.stopping.child_token();
            discovered.insert(key, stop.clone());
            // Of two peers that find each other, the one with the smaller id dials at
            // once; the other waits a little, in case the first does not look.
            let wait = me > id;
            shared
                .tasks
                .spawn(dial_loop(shared.clone(), id, addrs.to_vec(), stop, wait));
        }
        _ => debug!(peer = %short(&key), "a node on the LAN that the roster does not admit"),
    }
}

/// Connects to a peer again and again (with back-off) until `stop`; a peer already
/// connected (it dialled us) is left alone meanwhile. `wait_first` holds the first
/// attempt back a few seconds.
async fn dial_loop(
    shared: Arc<Shared>,
    id: EndpointId,
    addrs: Vec<SocketAddr>,
    stop: CancellationToken,
    wait_first: bool,
) {
    let first = Duration::from_millis(250);
    let mut wait = first;
    let mut limit = MAX_REDIAL;
    if wait_first {
        tokio::select! {
            _ = tokio::time::sleep(MAX_REDIAL) => {}
            _ = stop.cancelled() => return,
        }
    }
    let key = id.to_string();
    let found_on_lan = !shared.configured.contains_key(&key);
    let mut last_reached = tokio::time::Instant::now();
    while !stop.is_cancelled() {
        if found_on_lan && admission(&shared, &key).is_err() {
            // No longer admitted (revoked): `mdns_loop` forgets it when it sees the new
            // roster, and dials it again if a later roster admits it.
            return;
        }
        if found_on_lan && last_reached.elapsed() > QUIET_LAN_PEER {
            // Unreachable for long (gone from the LAN without our hearing of it): keep
            // trying, but only as often as a peer that refuses us.
            limit = MAX_REDIAL_REFUSED;
        }
        let connected = lock(&shared.status).get(&key).is_some_and(|s| s.connected);
        if connected {
            last_reached = tokio::time::Instant::now();
        } else {
            let mut addr = EndpointAddr::new(id);
            for a in &addrs {
                addr = addr.with_ip_addr(*a);
            }
            let attempt = tokio::select! {
                attempt = shared.endpoint.connect(addr, protocol::ALPN) => attempt,
                _ = stop.cancelled() => return,
            };
            match attempt {
                Ok(conn) => match run_connection(shared.clone(), conn, true).await {
                    Outcome::Session => {
                        last_reached = tokio::time::Instant::now();
                        wait = first;
                        limit = MAX_REDIAL;
                    }
                    Outcome::Refused => limit = MAX_REDIAL_REFUSED,
                },
                Err(e) => {
                    debug!(peer = %id.fmt_short(), error = %e, "peer unreachable");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        wait = (wait * 2).min(limit);
    }
}

/// How a connection ended, as far as redialling cares.
enum Outcome {
    /// The session ended normally or the connection was lost.
    Session,
    /// One side refused the other (not on the roster, a protocol fault, no Hello in
    /// time): redialling at once would only repeat it.
    Refused,
}

/// Runs one session on a connection until either side ends it.
async fn run_connection(shared: Arc<Shared>, conn: Connection, dialer: bool) -> Outcome {
    let peer_id = conn.remote_id().to_string();
    let roster_member = match admission(&shared, &peer_id) {
        Ok(member) => member,
        Err(reason) => {
            warn!(peer = %short(&peer_id), reason, "refused a connection");
            conn.close(VarInt::from_u32(CLOSE_NOT_ALLOWED), reason.as_bytes());
            return Outcome::Refused;
        }
    };
    let streams = if dialer {
        tokio::time::timeout(HELLO_TIMEOUT, conn.open_bi()).await
    } else {
        tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await
    };
    let (send, recv) = match streams {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(peer = %short(&peer_id), error = %e, "no stream");
            return Outcome::Refused;
        }
        Err(_) => {
            warn!(peer = %short(&peer_id), "peer opened no stream in time");
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"no stream in time");
            return Outcome::Refused;
        }
    };
    debug!(peer = %short(&peer_id), dialer, "connection open");
    set_status(&shared, &peer_id, |s| s.connected = true);

    let mut session = Session::new(shared.me.clone(), peer_id.clone(), roster_member);
    if let Some(role) = shared.configured.get(&peer_id) {
        session.expect_role(*role);
    }
    session.set_rosters(lock(&shared.trust).offers());
    let (peer_known, peer) = watch::channel(None);
    let result = tokio::select! {
        r = drive(&shared, &mut session, send, recv, &peer_known) => r,
        // Never ends first: it runs until the connection closes.
        () = attachments::run(shared.clone(), conn.clone(), peer) => Ok(()),
    };
    let stats = session.stats();
    {
        let mut store = lock(&shared.store);
        if let Err(e) = session.persist_states(&mut store) {
            warn!(peer = %short(&peer_id), error = %e, "could not persist sync states");
        }
    }
    set_status(&shared, &peer_id, |s| s.connected = false);
    match result {
        Ok(()) => {
            info!(peer = %short(&peer_id), messages_in = stats.messages_in,
                messages_out = stats.messages_out, stored = stats.records_stored,
                "peer disconnected");
            conn.close(VarInt::from_u32(CLOSE_DONE), b"bye");
            Outcome::Session
        }
        Err(SessionEnd::NotAdmitted(reason)) => {
            warn!(peer = %short(&peer_id), reason, "ended the session: the peer is no longer admitted");
            conn.close(VarInt::from_u32(CLOSE_NOT_ALLOWED), reason.as_bytes());
            Outcome::Refused
        }
        Err(SessionEnd::Protocol(e)) => {
            warn!(peer = %short(&peer_id), error = %e, "ended the session with a faulty peer");
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), e.to_string().as_bytes());
            Outcome::Refused
        }
        Err(SessionEnd::Io(e)) => {
            // The peer closing with an error code refused us (not on its roster) or found
            // fault with what we sent; a connection that was merely lost is redialled at
            // the ordinary pace.
            let (code, why) = match conn.close_reason() {
                Some(iroh::endpoint::ConnectionError::ApplicationClosed(c)) => (
                    Some(c.error_code),
                    String::from_utf8_lossy(&c.reason).into_owned(),
                ),
                _ => (None, String::new()),
            };
            if code == Some(VarInt::from_u32(CLOSE_NOT_ALLOWED)) {
                // The peer says why: "not on the roster", "revoked", or a unit or role
                // its roster does not give this node.
                warn!(peer = %short(&peer_id), reason = %why, "the peer refused this node");
            } else if let Some(code) = code.filter(|c| *c != VarInt::from_u32(CLOSE_DONE)) {
                warn!(peer = %short(&peer_id), %code, reason = %e,
                    "the peer ended the session for a fault");
            } else {
                info!(peer = %short(&peer_id), reason = %e, "peer connection lost");
            }
            match code {
                Some(c) if c != VarInt::from_u32(CLOSE_DONE) => Outcome::Refused,
                _ => Outcome::Session,
            }
        }
    }
}

enum SessionEnd {
    Protocol(ProtocolError),
    /// A newer roster revoked the peer or moved it to another unit.
    NotAdmitted(&'static str),
    Io(String),
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(protocol::MAX_FRAME_BYTES)
        .new_codec()
}

async fn drive(
    shared: &Arc<Shared>,
    session: &mut Session,
    send: iroh::endpoint::SendStream,
    recv: iroh::endpoint::RecvStream,
    peer_known: &watch::Sender<Option<Member>>,
) -> Result<(), SessionEnd> {
    let mut reader = FramedRead::new(recv, codec());
    let mut writer = FramedWrite::new(send, codec());
    let mut changes: watch::Receiver<u64> = lock(&shared.store).subscribe();
    let mut rescan = tokio::time::interval(RESCAN_INTERVAL);
    let mut rosters = shared.roster_changed.subscribe();
    // A roster taken between the admission check and now is not announced again.
    if let Err(reason) = still_admitted(shared, session) {
        return Err(SessionEnd::NotAdmitted(reason));
    }

    let hello = {
        let store = lock(&shared.store);
        session.start(&store).map_err(SessionEnd::Protocol)?
    };
    let bytes_out = send_bounded(shared, &mut writer, hello).await?;
    set_status(shared, session.peer_id(), |s| s.bytes_out += bytes_out);
    // Armed once our Hello is out, so time spent waiting for the store does not count
    // against the peer.
    let hello_deadline = tokio::time::sleep(HELLO_TIMEOUT);
    tokio::pin!(hello_deadline);

    loop {
        let out = tokio::select! {
            // A frame that is already here wins over a deadline that passed meanwhile.
            biased;
            frame = reader.next() => {
                let Some(first) = frame else { return Ok(()) };
                let mut frames = vec![first];
                while frames.len() < FRAMES_PER_BATCH {
                    match reader.next().now_or_never() {
                        Some(Some(f)) => frames.push(f),
                        _ => break,
                    }
                }
                let mut messages = Vec::with_capacity(frames.len());
                let mut bytes_in = 0;
                for f in frames {
                    let bytes = f.map_err(|e| match e.kind() {
                        std::io::ErrorKind::InvalidData => SessionEnd::Protocol(
                            ProtocolError::Malformed(format!("frame rejected: {e}"))),
                        _ => SessionEnd::Io(e.to_string()),
                    })?;
                    bytes_in += bytes.len() as u64 + FRAME_PREFIX_BYTES;
                    messages.push(Message::decode(&bytes).map_err(SessionEnd::Protocol)?);
                }
                set_status(shared, session.peer_id(), |s| s.bytes_in += bytes_in);
                debug!(peer = %short(session.peer_id()), frames = messages.len(), "frames in");
                let had_hello = session.has_hello();
                let out = handle_batch(shared, session, messages)?;
                if !had_hello
                    && session.has_hello()
                    && let Some(m) = session.peer()
                {
                    info!(peer = %short(session.peer_id()), unit = %m.unit,
                        role = m.role.as_str(), "session started");
                    peer_known.send_replace(Some(m.clone()));
                }
                take_rosters(shared, session);
                out
            }
            _ = rosters.changed() => {
                if let Err(reason) = still_admitted(shared, session) {
                    return Err(SessionEnd::NotAdmitted(reason));
                }
                session.set_rosters(lock(&shared.trust).offers())
            }
            _ = changes.changed() => poll(shared, session)?,
            _ = rescan.tick() => poll(shared, session)?,
            _ = &mut hello_deadline, if !session.has_hello() => {
                return Err(SessionEnd::Protocol(ProtocolError::HelloTimeout(HELLO_TIMEOUT)));
            }
            _ = shared.stopping.cancelled() => return Ok(()),
        };
        if !out.is_empty() {
            debug!(peer = %short(session.peer_id()), frames = out.len(), "frames out");
        }
        let bytes_out = send_bounded(shared, &mut writer, out).await?;
        set_status(shared, session.peer_id(), |s| s.bytes_out += bytes_out);
        update_status(shared, session);
    }
}

/// Checks the rosters the peer sent; keeps each newer one that verifies, in the store
/// and in force, and tells every session.
fn take_rosters(shared: &Shared, session: &mut Session) {
    let mut changed = false;
    for bytes in session.take_received_rosters() {
        let mut trust = lock(&shared.trust);
        match trust.accept(&bytes) {
            Ok(Some(r)) => {
                info!(peer = %short(session.peer_id()), issuer = %r.issuer.fmt_short(),
                    unit = %r.unit, version = r.version, members = r.roster.len(),
                    "newer roster received");
                let version = protocol::RosterVersion {
                    issuer: r.issuer.to_string(),
                    version: r.version,
                };
                let stored = tokio::task::block_in_place(|| {
                    lock(&shared.store).put_roster(&version.issuer, version.version, &bytes)
                });
                if let Err(e) = stored {
                    warn!(error = %e, "could not keep the roster in the store");
                }
                session.peer_has_roster(&version);
                changed = true;
            }
            Ok(None) => {}
            Err(e) => {
                // Not ours to trust (another province's, say) or damaged: ignored, and
                // the session goes on.
                debug!(peer = %short(session.peer_id()), error = %e, "roster not taken");
            }
        }
    }
    if changed {
        shared.roster_changed.send_modify(|n| *n += 1);
    }
}

/// Whether the peer of a running session is still admitted as what it said it was.
fn still_admitted(shared: &Shared, session: &Session) -> Result<(), &'static str> {
    match admission(shared, session.peer_id())? {
        Some(member) if session.peer().is_some_and(|p| *p != member) => {
            Err("the roster now lists it for another unit or role")
        }
        _ => Ok(()),
    }
}

/// [`send_all`], bounded: a peer that stops reading (its flow-control window stays full)
/// ends its session after [`SEND_TIMEOUT`] instead of holding it forever, and a shutdown
/// does not wait for it.
async fn send_bounded(
    shared: &Shared,
    writer: &mut FramedWrite<iroh::endpoint::SendStream, LengthDelimitedCodec>,
    messages: Vec<Message>,
) -> Result<u64, SessionEnd> {
    tokio::select! {
        sent = tokio::time::timeout(SEND_TIMEOUT, send_all(writer, messages)) => match sent {
            Ok(result) => result,
            Err(_) => Err(SessionEnd::Io(format!(
                "the peer read nothing for {SEND_TIMEOUT:?}"
            ))),
        },
        _ = shared.stopping.cancelled() => Err(SessionEnd::Io("shutting down".into())),
    }
}

fn handle_batch(
    shared: &Arc<Shared>,
    session: &mut Session,
    messages: Vec<Message>,
) -> Result<Vec<Message>, SessionEnd> {
    tokio::task::block_in_place(|| {
        let mut store = lock(&shared.store);
        store.batch(|store| {
            let mut out = Vec::new();
            for m in messages {
                out.extend(session.handle(store, m)?);
            }
            Ok::<_, ProtocolError>(out)
        })
    })
    .map_err(SessionEnd::Protocol)
}

fn poll(shared: &Arc<Shared>, session: &mut Session) -> Result<Vec<Message>, SessionEnd> {
    tokio::task::block_in_place(|| {
        let mut store = lock(&shared.store);
        store.batch(|store| session.poll_local(store))
    })
    .map_err(SessionEnd::Protocol)
}

/// Writes messages and flushes; returns the bytes written.
async fn send_all(
    writer: &mut FramedWrite<iroh::endpoint::SendStream, LengthDelimitedCodec>,
    messages: Vec<Message>,
) -> Result<u64, SessionEnd> {
    if messages.is_empty() {
        return Ok(0);
    }
    let mut written = 0;
    for m in messages {
        let frame = bytes::Bytes::from(m.encode());
        written += frame.len() as u64 + FRAME_PREFIX_BYTES;
        writer
            .feed(frame)
            .await
            .map_err(|e| SessionEnd::Io(e.to_string()))?;
    }
    SinkExt::<bytes::Bytes>::flush(writer)
        .await
        .map_err(|e| SessionEnd::Io(e.to_string()))?;
    Ok(written)
}

fn set_status(shared: &Shared, peer: &str, f: impl FnOnce(&mut PeerStatus)) {
    let mut status = lock(&shared.status);
    let entry = status
        .entry(peer.to_string())
        .or_insert_with(|| PeerStatus {
            id: peer.to_string(),
            ..Default::default()
        });
    f(entry);
}

fn update_status(shared: &Shared, session: &Session) {
    let idle = session.is_idle();
    set_status(shared, session.peer_id(), |s| {
        if let Some(m) = session.peer() {
            s.unit = Some(m.unit.to_string());
            s.role = Some(m.role.as_str());
        }
        s.pending_out = session.pending_out() as u64;
        s.pending_in = session.pending_in();
        if idle {
            s.last_sync = Some(model::now_vietnam());
        }
    });
}
