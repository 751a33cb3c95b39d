//! Catalog reconciliation: which records two stores already hold alike, found with
//! traffic that grows with the differences, not with the number of records.
//!
//! A session falls back to it when the peer holds no valid cursor for our store (its
//! store was wiped, restored or re-created, or the two never met): rather than offer
//! every record, each side learns which of its records the peer already holds with the
//! same heads, and offers only the others.
//!
//! This is range-based set reconciliation over items `(record id, hash of its heads)`,
//! each side's items being the records it holds that the other may see, in id order. A
//! side asks whether a range of ids matches by sending the range's fingerprint (the XOR
//! of its items' hashes, and their count). The other side answers:
//!
//! - `Match`: its fingerprint is the same; every item in the range is held alike.
//! - `Have []`: either side has nothing in the range; nothing in it is held alike.
//! - `Items`: its items in the range, when there are few; the asker answers with `Have`,
//!   the ids of those items it holds alike, and learns the same from the list.
//! - `Split`: many items and a different fingerprint; it sends the fingerprints of up to
//!   [`FANOUT`] parts of the range, which the asker answers in turn.
//!
//! Every fingerprint and every item list sent awaits exactly one answer; a side has
//! settled when it awaits none. Both sides may ask at once (each lacks a cursor for the
//! other): the exchanges are independent and answer each other's questions alike.
//!
//! Each exchange has a random salt, chosen by the side that starts it and carried in its
//! messages, that keys the item hashes a fingerprint XORs: XOR is linear, so without the
//! salt whoever can choose record ids could build two different ranges with one
//! fingerprint. A side keeps the XOR of every prefix of its items per salt, so a
//! fingerprint costs a binary search, whatever the range a peer asks about.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::model::DocId;

/// A record id on the wire: the UUID's 16 bytes, which sort as the ids do.
pub type Key = [u8; 16];

/// The first 16 bytes of a BLAKE3 hash.
pub type Hash = [u8; 16];

/// Items at or below this count are listed rather than split further.
pub const LIST_AT_MOST: usize = 32;

/// The parts a range is split into.
pub const FANOUT: usize = 16;

/// The most items one range of a message may list.
const MAX_ITEMS_PER_RANGE: usize = 4 * LIST_AT_MOST;

/// The most ranges a session may send us in all; an honest exchange over a million
/// records needs a few hundred thousand.
const MAX_RANGES_PER_SESSION: usize = 2_000_000;

/// The most ranges one message carries; longer answers are sent as several messages,
/// which keeps every message far below the frame limit.
pub const MAX_RANGES_PER_MESSAGE: usize = 1024;

/// A random value that keys the fingerprints of one exchange.
pub type Salt = [u8; 16];

/// Exchanges (salts) a session takes part in: its own and the peer's.
const MAX_SALTS: usize = 2;

/// The ids from `lower` (exclusive; `None`: from the first) to `upper` (inclusive;
/// `None`: to the last), and what the sender says of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogRange {
    pub lower: Option<Key>,
    pub upper: Option<Key>,
    pub part: CatalogPart,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogPart {
    /// Asks: does the receiver hold the same items in the range?
    Fingerprint { fingerprint: Hash, count: u64 },
    /// Answers a fingerprint: these are all the sender's items in the range. Awaits a
    /// `Have`.
    Items { items: Vec<(Key, Hash)> },
    /// Answers a fingerprint or an item list: of the asker's items in the range, the
    /// sender holds these alike (none, in answer to a fingerprint).
    Have { keys: Vec<Key> },
    /// Answers a fingerprint: the range holds the same items on both sides.
    Match,
    /// Answers a fingerprint: the sender asks about the parts of the range instead.
    Split,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    #[error("a catalog range lists {0} items, more than {MAX_ITEMS_PER_RANGE}")]
    TooManyItems(usize),
    #[error("more than {MAX_RANGES_PER_SESSION} catalog ranges in one session")]
    TooManyRanges,
    #[error("a catalog message of {0} ranges, more than {MAX_RANGES_PER_MESSAGE}")]
    MessageTooLong(usize),
    #[error("catalog messages for more than {MAX_SALTS} exchanges in one session")]
    TooManyExchanges,
}

struct Item {
    key: Key,
    hash: Hash,
    id: DocId,
    seq: u64,
}

/// One side's catalog for one peer and what reconciling it has shown.
pub struct Catalog {
    items: Vec<Item>,
    /// Per salt: `prefixes[i]` is the XOR of the salted hashes of the first `i` items.
    prefixes: HashMap<Salt, Vec<Hash>>,
    /// Records the peer holds alike, with our seq when the catalog was taken.
    alike: HashMap<DocId, u64>,
    awaiting: usize,
    ranges_received: usize,
}

/// The hash of a record's heads as the catalog compares them.
pub fn heads_hash(heads: &str) -> Hash {
    truncate(blake3::hash(heads.as_bytes()))
}

fn truncate(h: blake3::Hash) -> Hash {
    h.as_bytes()[..16].try_into().expect("32 bytes")
}

fn key_of(id: &DocId) -> Key {
    *uuid::Uuid::parse_str(id.as_str())
        .expect("a DocId is a UUID")
        .as_bytes()
}

impl Catalog {
    /// A catalog of `records`: `(id, hash of heads, our seq)` of each record the peer
    /// may see.
    pub fn new(records: impl IntoIterator<Item = (DocId, Hash, u64)>) -> Catalog {
        let mut items: Vec<Item> = records
            .into_iter()
            .map(|(id, hash, seq)| Item {
                key: key_of(&id),
                hash,
                id,
                seq,
            })
            .collect();
        items.sort_by_key(|i| i.key);
        Catalog {
            items,
            prefixes: HashMap::new(),
            alike: HashMap::new(),
            awaiting: 0,
            ranges_received: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The first question of an exchange keyed by `salt`: does the whole catalog match?
    pub fn start(&mut self, salt: Salt) -> Result<Vec<CatalogRange>, CatalogError> {
        self.prefixes_for(&salt)?;
        Ok(vec![self.ask(&salt, None, None)])
    }

    fn prefixes_for(&mut self, salt: &Salt) -> Result<(), CatalogError> {
        if self.prefixes.contains_key(salt) {
            return Ok(());
        }
        if self.prefixes.len() >= MAX_SALTS {
            return Err(CatalogError::TooManyExchanges);
        }
        let key = blake3::hash(salt);
        let mut prefixes = Vec::with_capacity(self.items.len() + 1);
        let mut acc = [0u8; 16];
        prefixes.push(acc);
        for item in &self.items {
            let mut hasher = blake3::Hasher::new_keyed(key.as_bytes());
            hasher.update(&item.key);
            hasher.update(&item.hash);
            for (a, h) in acc.iter_mut().zip(truncate(hasher.finalize())) {
                *a ^= h;
            }
            prefixes.push(acc);
        }
        self.prefixes.insert(*salt, prefixes);
        Ok(())
    }

    /// Has every question we asked been answered?
    pub fn is_settled(&self) -> bool {
        self.awaiting == 0
    }

    /// Did reconciling show that the peer holds this record as we held it at `seq`?
    pub fn is_alike(&self, id: &DocId, seq: u64) -> bool {
        self.alike.get(id) == Some(&seq)
    }

    /// How many of our records the peer was shown to hold alike.
    pub fn alike_count(&self) -> usize {
        self.alike.len()
    }

    fn range(&self, lower: Option<&Key>, upper: Option<&Key>) -> std::ops::Range<usize> {
        let start = lower.map_or(0, |l| self.items.partition_point(|i| i.key <= *l));
        let end = upper.map_or(self.items.len(), |u| {
            self.items.partition_point(|i| i.key <= *u)
        });
        start..end.max(start)
    }

    fn fingerprint(&self, salt: &Salt, range: std::ops::Range<usize>) -> Hash {
        let prefixes = &self.prefixes[salt];
        let mut fp = prefixes[range.end];
        for (f, p) in fp.iter_mut().zip(prefixes[range.start]) {
            *f ^= p;
        }
        fp
    }

    fn ask(&mut self, salt: &Salt, lower: Option<Key>, upper: Option<Key>) -> CatalogRange {
        let range = self.range(lower.as_ref(), upper.as_ref());
        self.awaiting += 1;
        CatalogRange {
            lower,
            upper,
            part: CatalogPart::Fingerprint {
                count: range.len() as u64,
                fingerprint: self.fingerprint(salt, range),
            },
        }
    }

    fn mark_alike(&mut self, range: std::ops::Range<usize>) {
        for item in &self.items[range] {
            self.alike.insert(item.id.clone(), item.seq);
        }
    }

    /// Handles the peer's ranges of the exchange keyed by `salt`; returns the answers
    /// and questions to send back, in the same exchange.
    pub fn handle(
        &mut self,
        salt: &Salt,
        ranges: Vec<CatalogRange>,
    ) -> Result<Vec<CatalogRange>, CatalogError> {
        if ranges.len() > MAX_RANGES_PER_MESSAGE {
            return Err(CatalogError::MessageTooLong(ranges.len()));
        }
        self.ranges_received += ranges.len();
        if self.ranges_received > MAX_RANGES_PER_SESSION {
            return Err(CatalogError::TooManyRanges);
        }
        self.prefixes_for(salt)?;
        let mut out = Vec::new();
        for CatalogRange { lower, upper, part } in ranges {
            let range = self.range(lower.as_ref(), upper.as_ref());
            let answer = |part| CatalogRange { lower, upper, part };
            match part {
                CatalogPart::Fingerprint { fingerprint, count } => {
                    if count == range.len() as u64
                        && fingerprint == self.fingerprint(salt, range.clone())
                    {
                        self.mark_alike(range);
                        out.push(answer(CatalogPart::Match));
                    } else if count == 0 || range.is_empty() {
                        out.push(answer(CatalogPart::Have { keys: Vec::new() }));
                    } else if range.len() <= LIST_AT_MOST {
                        let items = self.items[range].iter().map(|i| (i.key, i.hash)).collect();
                        self.awaiting += 1;
                        out.push(answer(CatalogPart::Items { items }));
                    } else {
                        out.push(answer(CatalogPart::Split));
                        let per_part = range.len().div_ceil(FANOUT);
                        let mut part_lower = lower;
                        let mut start = range.start;
                        while start < range.end {
                            let end = (start + per_part).min(range.end);
                            let part_upper = if end == range.end {
                                upper
                            } else {
                                Some(self.items[end - 1].key)
                            };
                            out.push(self.ask(salt, part_lower, part_upper));
                            part_lower = part_upper;
                            start = end;
                        }
                    }
                }
                CatalogPart::Items { items } => {
                    if items.len() > MAX_ITEMS_PER_RANGE {
                        return Err(CatalogError::TooManyItems(items.len()));
                    }
                    self.answered();
                    let theirs: HashSet<(Key, Hash)> = items.into_iter().collect();
                    let mut keys = Vec::new();
                    for item in &self.items[range] {
                        if theirs.contains(&(item.key, item.hash)) {
                            self.alike.insert(item.id.clone(), item.seq);
                            keys.push(item.key);
                        }
                    }
                    out.push(answer(CatalogPart::Have { keys }));
                }
                CatalogPart::Have { keys } => {
                    if keys.len() > MAX_ITEMS_PER_RANGE {
                        return Err(CatalogError::TooManyItems(keys.len()));
                    }
                    self.answered();
                    let keys: HashSet<Key> = keys.into_iter().collect();
                    for i in range {
                        let item = &self.items[i];
                        if keys.contains(&item.key) {
                            self.alike.insert(item.id.clone(), item.seq);
                        }
                    }
                }
                CatalogPart::Match => {
                    self.answered();
                    self.mark_alike(range);
                }
                CatalogPart::Split => self.answered(),
            }
        }
        Ok(out)
    }

    fn answered(&mut self) {
        // An answer nobody asked for (a faulty peer) cannot make us wait for ever, nor
        // settle a question still open elsewhere: it only ends our waiting sooner, after
        // which we offer more, never less.
        self.awaiting = self.awaiting.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    fn id(n: u64) -> DocId {
        DocId::parse(&uuid::Uuid::from_u64_pair(n, n).hyphenated().to_string()).unwrap()
    }

    fn hash(n: u64) -> Hash {
        heads_hash(&n.to_string())
    }

    /// Runs the exchange to the end; returns the catalogs, the messages and the bytes
    /// that crossed.
    fn reconcile(
        a: Vec<(DocId, Hash, u64)>,
        b: Vec<(DocId, Hash, u64)>,
        both_ask: bool,
    ) -> (Catalog, Catalog, usize, usize) {
        let mut a = Catalog::new(a);
        let mut b = Catalog::new(b);
        let (salt_a, salt_b) = ([1; 16], [2; 16]);
        // In flight: (salt, ranges) one way and the other.
        let mut to_b = vec![(salt_a, a.start(salt_a).unwrap())];
        let mut to_a = if both_ask {
            vec![(salt_b, b.start(salt_b).unwrap())]
        } else {
            Vec::new()
        };
        let (mut messages, mut bytes) = (0, 0);
        while !to_a.is_empty() || !to_b.is_empty() {
            let deliver = |cat: &mut Catalog, inbox: Vec<(Salt, Vec<CatalogRange>)>| {
                let mut out = Vec::new();
                for (salt, ranges) in inbox {
                    for chunk in ranges.chunks(MAX_RANGES_PER_MESSAGE) {
                        let answers = cat.handle(&salt, chunk.to_vec()).unwrap();
                        if !answers.is_empty() {
                            out.push((salt, answers));
                        }
                    }
                }
                out
            };
            for inbox in [&to_a, &to_b] {
                for (_, ranges) in inbox {
                    messages += ranges.len().div_ceil(MAX_RANGES_PER_MESSAGE);
                    bytes += postcard::to_stdvec(ranges).unwrap().len() + 16;
                }
            }
            let next_a = deliver(&mut b, std::mem::take(&mut to_b));
            let next_b = deliver(&mut a, std::mem::take(&mut to_a));
            to_a = next_a;
            to_b = next_b;
            assert!(messages < 10_000, "the exchange never ends");
        }
        assert!(a.is_settled() && b.is_settled());
        (a, b, messages, bytes)
    }

    #[test]
    fn each_side_learns_exactly_which_of_its_records_the_other_holds_alike() {
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..40 {
            let n = [0, 1, 5, 40, 300, 5000][round % 6];
            let mut a = Vec::new();
            let mut b = Vec::new();
            for i in 0..n as u64 {
                let version = rng.random_range(0..4u64);
                match rng.random_range(0..10) {
                    0 => a.push((id(i), hash(version), i)),
                    1 => b.push((id(i), hash(version), i)),
                    2 => {
                        a.push((id(i), hash(version), i));
                        b.push((id(i), hash(version + 1), i));
                    }
                    _ => {
                        a.push((id(i), hash(version), i));
                        b.push((id(i), hash(version), i));
                    }
                }
            }
            let (ca, cb, _, _) = reconcile(a.clone(), b.clone(), round % 2 == 0);
            for (mine, theirs, cat) in [(&a, &b, &ca), (&b, &a, &cb)] {
                let theirs: HashSet<(String, Hash)> =
                    theirs.iter().map(|(i, h, _)| (i.to_string(), *h)).collect();
                for (i, h, seq) in mine {
                    assert_eq!(
                        cat.is_alike(i, *seq),
                        theirs.contains(&(i.to_string(), *h)),
                        "round {round}, record {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn traffic_follows_the_differences() {
        let n = 10_000u64;
        let all: Vec<_> = (0..n).map(|i| (id(i), hash(i), i)).collect();
        let mut changed = all.clone();
        for i in (0..n).step_by(1000) {
            changed[i as usize].1 = hash(i + n);
        }
        let (ca, _, messages, bytes) = reconcile(all.clone(), changed, false);
        assert_eq!(ca.alike_count(), (n - 10) as usize);
        // Ten differences among ten thousand: a few kilobytes, not the 320 KB a full
        // list of ids and hashes would take.
        assert!(bytes < 40_000, "{bytes} bytes in {messages} messages");

        // A side that holds nothing answers at once.
        let (ca, _, messages, bytes) = reconcile(all, Vec::new(), false);
        assert_eq!(ca.alike_count(), 0);
        assert_eq!(messages, 2);
        assert!(bytes < 100);
    }

    #[test]
    fn a_faulty_peer_can_only_end_its_own_exchange() {
        let mut a = Catalog::new((0..100).map(|i| (id(i), hash(i), i)));
        let salt = [7; 16];
        let _ = a.start(salt).unwrap();
        let flood = CatalogRange {
            lower: None,
            upper: None,
            part: CatalogPart::Items {
                items: vec![([0; 16], [0; 16]); MAX_ITEMS_PER_RANGE + 1],
            },
        };
        assert_eq!(
            a.handle(&salt, vec![flood]),
            Err(CatalogError::TooManyItems(MAX_ITEMS_PER_RANGE + 1))
        );
        // Unasked answers and inverted ranges change nothing but our waiting.
        let odd = vec![
            CatalogRange {
                lower: Some([0xff; 16]),
                upper: Some([0; 16]),
                part: CatalogPart::Match,
            },
            CatalogRange {
                lower: None,
                upper: None,
                part: CatalogPart::Split,
            },
        ];
        assert!(a.handle(&salt, odd).unwrap().is_empty());
        assert!(a.is_settled());
        assert_eq!(a.alike_count(), 0);
        let whole = CatalogRange {
            lower: None,
            upper: None,
            part: CatalogPart::Fingerprint {
                fingerprint: [0; 16],
                count: 1,
            },
        };
        assert_eq!(
            a.handle(&salt, vec![whole.clone(); MAX_RANGES_PER_MESSAGE + 1]),
            Err(CatalogError::MessageTooLong(MAX_RANGES_PER_MESSAGE + 1))
        );
        // Our exchange and one of the peer's; a third salt is a fault.
        assert!(a.handle(&[8; 16], vec![whole.clone()]).is_ok());
        assert_eq!(
            a.handle(&[9; 16], vec![whole]),
            Err(CatalogError::TooManyExchanges)
        );
    }
}
