//! Attachment transfers over a session's connection.
//!
//! Once a session knows who its peer is, each side serves the attachment files it holds
//! and fetches the ones it lacks, each transfer on a bidirectional QUIC stream of its
//! own (the session's frames keep theirs, so documents are never stuck behind a file):
//!
//! - request: the hash (32 bytes), the size the document gives (8 bytes, big-endian) and
//!   where to start (8 bytes, the fetcher's verified prefix);
//! - answer: one byte, `0` followed by the bao encoding of the file from that point, or
//!   `1` ("not available": not held whole here, or not for this peer; which of the two
//!   is not said, so a peer learns nothing of files it may not see).
//!
//! A file is served only to a peer that may see a record listing it, and asked for only
//! from such a peer. A fetcher verifies every 16 KiB group as it arrives and keeps a
//! checkpoint of what is verified, so a transfer cut by a kill, a lost link or a corrupt
//! byte resumes where it stopped, from this peer or another.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iroh::endpoint::Connection;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::io::SyncIoBridge;
use tracing::{debug, info, warn};

use super::{Shared, lock};
use crate::blobs::{self, BlobError, Hash};
use crate::policy::Member;
use crate::protocol::{self, short};

const REQUEST_BYTES: usize = 48;
const AVAILABLE: u8 = 0;
const NOT_AVAILABLE: u8 = 1;
/// How long a request or the first answer byte may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long before a peer that did not have a file is asked again.
const ASK_AGAIN: Duration = Duration::from_secs(10);
/// How often the fetcher looks for wanted files without being told of a change.
const LOOK_AGAIN: Duration = Duration::from_secs(5);
/// How long a fetch may wait for a byte from the peer before it is given up.
const STALLED: Duration = Duration::from_secs(30);
/// How long a served transfer may wait for the fetcher to take more.
const STALLED_READER: Duration = Duration::from_secs(300);
/// Transfers one connection serves at once.
const SERVING_AT_ONCE: usize = 2;
/// Wanted files looked at per round.
const WANTED_PER_ROUND: usize = 256;

/// Serves and fetches attachments on `conn` once `peer` is known; runs until the
/// connection ends (or the future is dropped with the session).
pub(super) async fn run(
    shared: Arc<Shared>,
    conn: Connection,
    mut peer: watch::Receiver<Option<Member>>,
) {
    let member = loop {
        if let Some(m) = peer.borrow().clone() {
            break m;
        }
        if peer.changed().await.is_err() {
            return;
        }
    };
    tokio::join!(
        serve(&shared, &conn, &member),
        fetch(&shared, &conn, &member)
    );
}

/// May `peer` have this file? Either it gave it to this store (then it had it), or it
/// may see a record that lists it and the listing was made by another unit: anyone can
/// list a hash it has heard of, in a record of its own or one shared with it, and that
/// must not open the file to it. Who listed it is the node recorded in the entry
/// (`added_on`), placed in its unit by the roster; an entry without one counts as the
/// record's owner's.
fn may_have(shared: &Shared, peer: &Member, hash: &Hash, size: u64) -> bool {
    let hex = hash.to_hex();
    let unit = peer.unit.as_str();
    // The store's lock is not held together with the roster's (sessions take them in
    // the other order).
    let listers: Option<Vec<(Option<String>, String)>> = tokio::task::block_in_place(|| {
        let store = lock(&shared.store);
        if store.attachment_came_from(hex.as_str(), size, unit).ok()? {
            return Some(Vec::new());
        }
        let mut listers = Vec::new();
        for r in store.attachment_records(hex.as_str(), size).ok()? {
            if !protocol::visible_to(&store, peer, &r.header, r.target.as_ref()).unwrap_or(false) {
                continue;
            }
            let json = store.stored_json(&r.id).ok().flatten().unwrap_or_default();
            let node = crate::model::attachments_in_json(&json)
                .into_iter()
                .find(|a| a.hash == hex.as_str())
                .and_then(|a| a.added_on);
            listers.push((node, r.header.unit.clone()));
        }
        (!listers.is_empty()).then_some(listers)
    });
    let Some(listers) = listers else {
        return false;
    };
    if listers.is_empty() {
        return true;
    }
    let me = shared.endpoint.id().to_string();
    let trust = lock(&shared.trust);
    listers.into_iter().any(|(node, owner)| {
        let lister = match node {
            // This node need not be on its own roster.
            Some(n) if n == me => shared.me.unit.to_string(),
            Some(n) => trust.member(&n).map_or(owner, |m| m.unit.to_string()),
            None => owner,
        };
        lister != unit
    })
}

async fn serve(shared: &Arc<Shared>, conn: &Connection, peer: &Member) {
    let limit = Arc::new(Semaphore::new(SERVING_AT_ONCE));
    let mut running = JoinSet::new();
    loop {
        let Ok((send, recv)) = conn.accept_bi().await else {
            return;
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (shared, peer, peer_id) = (shared.clone(), peer.clone(), conn.remote_id().to_string());
        running.spawn(async move {
            if let Err(e) = serve_one(&shared, &peer, send, recv).await {
                debug!(peer = %short(&peer_id), error = %e, "attachment not served");
            }
            drop(permit);
        });
        while running.try_join_next().is_some() {}
    }
}

async fn serve_one(
    shared: &Arc<Shared>,
    peer: &Member,
    mut send: iroh::endpoint::SendStream,
    mut recv: iroh::endpoint::RecvStream,
) -> Result<(), BlobError> {
    let mut request = [0u8; REQUEST_BYTES];
    tokio::time::timeout(ANSWER_TIMEOUT, recv.read_exact(&mut request))
        .await
        .map_err(|_| io("no request in time"))?
        .map_err(io)?;
    let hash = Hash::from_bytes(request[..32].try_into().expect("32 bytes"));
    let size = u64::from_be_bytes(request[32..40].try_into().expect("8 bytes"));
    let start = u64::from_be_bytes(request[40..48].try_into().expect("8 bytes"));
    // The policy first, so that whether the file is here does not change the answer's
    // timing for a peer that may not have it.
    let available = may_have(shared, peer, &hash, size)
        && start <= size
        && shared.blobs.complete_size(&hash) == Some(size);
    if !available {
        send.write_all(&[NOT_AVAILABLE]).await.map_err(io)?;
        send.finish().map_err(io)?;
        return Ok(());
    }
    send.write_all(&[AVAILABLE]).await.map_err(io)?;
    debug!(hash = %hash.to_hex(), start, size, "serving an attachment");
    let blobs = shared.blobs.clone();
    let handle = tokio::runtime::Handle::current();
    // A peer that stops reading ends the transfer instead of holding it (given time: a
    // fetcher pacing a slow line takes its bytes slowly).
    let mut send = tokio_io_timeout::TimeoutWriter::new(send);
    send.set_timeout(Some(STALLED_READER));
    let send = Box::pin(send);
    tokio::task::spawn_blocking(move || {
        let mut out =
            std::io::BufWriter::with_capacity(1 << 20, SyncIoBridge::new_with_handle(send, handle));
        blobs.serve(&hash, start, &mut out)?;
        out.flush()?;
        let mut bridge = out.into_inner().map_err(|e| e.into_error())?;
        bridge.shutdown()?;
        Ok::<_, BlobError>(())
    })
    .await
    .map_err(io)?
}

async fn fetch(shared: &Arc<Shared>, conn: &Connection, peer: &Member) {
    let peer_id = conn.remote_id().to_string();
    let mut changes = lock(&shared.store).subscribe();
    // Files this peer did not have, and when we asked.
    let mut not_here: HashMap<(Hash, u64), Instant> = HashMap::new();
    // Where the next round reads the wanted list from: rounds go through the whole
    // list, so files no peer has cannot keep the others from being tried.
    let mut after: (String, u64) = (String::new(), 0);
    loop {
        let (wanted, next) = tokio::task::block_in_place(|| {
            let store = lock(&shared.store);
            let rows = store
                .wanted_attachments((&after.0, after.1), WANTED_PER_ROUND)
                .unwrap_or_default();
            let next = match rows.len() {
                WANTED_PER_ROUND => rows.last().map(|r| (r.0.clone(), r.1)).unwrap_or_default(),
                _ => (String::new(), 0),
            };
            let mut out: Vec<(Hash, u64)> = Vec::new();
            for (hex, size, records) in rows {
                let Ok(hash) = blobs::parse_hash(&hex) else {
                    continue;
                };
                if shared.blobs.complete_size(&hash) == Some(size) {
                    let _ = store.attachment_held(&hex, size);
                    continue;
                }
                let may = records.iter().any(|r| {
                    protocol::visible_to(&store, peer, &r.header, r.target.as_ref())
                        .unwrap_or(false)
                });
                if may {
                    out.push((hash, size));
                }
            }
            (out, next)
        });
        after = next;
        let mut fetched = false;
        for (hash, size) in wanted {
            if not_here
                .get(&(hash, size))
                .is_some_and(|t| t.elapsed() < ASK_AGAIN)
            {
                continue;
            }
            let Some(claim) = shared.blobs.claim(hash) else {
                continue;
            };
            match fetch_one(shared, conn, claim, size).await {
                Ok(true) => {
                    info!(peer = %short(&peer_id), hash = %hash.to_hex(), size,
                        "attachment received and verified");
                    let _ = tokio::task::block_in_place(|| {
                        let store = lock(&shared.store);
                        store.attachment_held(hash.to_hex().as_str(), size)?;
                        store.attachment_source(hash.to_hex().as_str(), size, peer.unit.as_str())
                    });
                    not_here.remove(&(hash, size));
                    fetched = true;
                }
                Ok(false) => {
                    not_here.insert((hash, size), Instant::now());
                }
                Err(e) => {
                    if conn.close_reason().is_some() {
                        return;
                    }
                    warn!(peer = %short(&peer_id), hash = %hash.to_hex(), error = %e,
                        "attachment transfer stopped; it resumes from what is verified");
                    not_here.insert((hash, size), Instant::now());
                }
            }
        }
        if !fetched && after.0.is_empty() {
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(LOOK_AGAIN) => {}
                _ = conn.closed() => return,
            }
        }
    }
}

fn io(e: impl std::fmt::Display) -> BlobError {
    BlobError::Io(std::io::Error::other(e.to_string()))
}

/// Fetches one file from the peer; `Ok(false)` if the peer does not offer it.
async fn fetch_one(
    shared: &Arc<Shared>,
    conn: &Connection,
    claim: blobs::Claim,
    size: u64,
) -> Result<bool, BlobError> {
    let start = shared.blobs.resume_at(&claim.hash);
    let (mut send, mut recv) = conn.open_bi().await.map_err(io)?;
    let mut request = [0u8; REQUEST_BYTES];
    request[..32].copy_from_slice(claim.hash.as_bytes());
    request[32..40].copy_from_slice(&size.to_be_bytes());
    request[40..48].copy_from_slice(&start.to_be_bytes());
    send.write_all(&request).await.map_err(io)?;
    send.finish().map_err(io)?;
    let mut answer = [0u8; 1];
    tokio::time::timeout(ANSWER_TIMEOUT, recv.read_exact(&mut answer))
        .await
        .map_err(|_| io("no answer in time"))?
        .map_err(io)?;
    if answer[0] != AVAILABLE {
        return Ok(false);
    }
    debug!(hash = %claim.hash.to_hex(), start, size, "fetching an attachment");
    let blobs = shared.blobs.clone();
    let rate = shared.attachment_rate;
    let handle = tokio::runtime::Handle::current();
    // A peer that stops sending ends the transfer (what was verified is kept).
    let mut recv = tokio_io_timeout::TimeoutReader::new(recv);
    recv.set_timeout(Some(STALLED));
    let recv = Box::pin(recv);
    tokio::task::spawn_blocking(move || {
        let encoded = SyncIoBridge::new_with_handle(recv, handle);
        blobs.receive(&claim, size, start, encoded, rate)
    })
    .await
    .map_err(io)??;
    Ok(true)
}
