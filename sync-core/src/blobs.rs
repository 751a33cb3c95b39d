//! Attachment files: stored once per BLAKE3 hash, verified while they stream in, and
//! resumed from what was already verified.
//!
//! Layout under the attachments directory (`DIR/attachments`):
//!
//! - `HASH` — a complete file, named by the BLAKE3 hash (hex) of its bytes. It appears
//!   only once every byte is verified, by a rename, so a file under this name is never
//!   partial.
//! - `HASH.obao` — its bao outboard (the BLAKE3 tree's inner hashes, post order, about
//!   0.4% of the file with 16 KiB chunk groups), which lets it be served in verified
//!   ranges.
//! - `partial/HASH` and `partial/HASH.verified` — a file being fetched, and how many of
//!   its leading bytes are verified and on disk (written after the data is synced, so a
//!   kill at any point loses at most what came after the last checkpoint).
//! - `partial/upload-*` — a file a clerk is uploading, named by its hash once it is in.
//!
//! A transfer is a bao encoding of the range still missing ([`Blobs::serve`] and
//! [`Blobs::receive`]): each 16 KiB group is checked against the root hash before it is
//! written, so a corrupt byte ends the transfer within one group, and a transfer cut
//! short resumes at the last checkpoint.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bao_tree::io::outboard::PostOrderMemOutboard;
use bao_tree::io::{BaoContentItem, Leaf};
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};

/// 16 KiB chunk groups: the unit of verification and of resumption.
pub const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(4);
/// The largest attachment a node stores or fetches.
pub const MAX_ATTACHMENT_BYTES: u64 = 4 << 30;
/// Verified bytes between two checkpoints of a fetch: what a kill can cost.
const CHECKPOINT_BYTES: u64 = 1 << 20;

/// A BLAKE3 hash, as attachments are named.
pub type Hash = blake3::Hash;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{0:?} is not an attachment hash (64 hexadecimal digits)")]
    BadHash(String),
    #[error("attachments are limited to {} MiB", MAX_ATTACHMENT_BYTES >> 20)]
    TooLarge,
    #[error("the attachment does not match its hash")]
    Mismatch,
    #[error("the peer sent data that does not verify against the hash: {0}")]
    Corrupt(String),
    #[error("attachment storage: {0}")]
    Io(#[from] io::Error),
}

/// How much of an attachment this store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobState {
    Complete,
    /// Being fetched: this many leading bytes are verified.
    Partial(u64),
    Missing,
}

impl BlobState {
    pub fn as_str(self) -> &'static str {
        match self {
            BlobState::Complete => "complete",
            BlobState::Partial(_) => "partial",
            BlobState::Missing => "missing",
        }
    }
}

/// Bytes of attachment data moved by this process, for status pages and metrics.
#[derive(Debug, Default)]
pub struct BlobCounters {
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub completed: AtomicU64,
    pub corrupt: AtomicU64,
}

/// The attachment files of one data directory.
#[derive(Debug)]
pub struct Blobs {
    dir: PathBuf,
    /// Hashes being fetched now: one transfer per file, whichever peer serves it.
    fetching: Mutex<HashSet<Hash>>,
    /// When the download rate allows the next bytes in (see `pace`).
    next_free: Mutex<Instant>,
    pub counters: BlobCounters,
}

/// Parses a hash written as 64 hex digits.
pub fn parse_hash(s: &str) -> Result<Hash, BlobError> {
    if s.len() != 64 {
        return Err(BlobError::BadHash(s.to_string()));
    }
    Hash::from_hex(s).map_err(|_| BlobError::BadHash(s.to_string()))
}

impl Blobs {
    /// Opens (creating if needed) the attachments directory; uploads a killed process
    /// left unfinished are removed.
    pub fn open(dir: &Path) -> Result<Blobs, BlobError> {
        fs::create_dir_all(dir.join("partial"))?;
        for entry in fs::read_dir(dir.join("partial"))? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with("upload-") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Blobs {
            dir: dir.to_path_buf(),
            fetching: Mutex::new(HashSet::new()),
            next_free: Mutex::new(Instant::now()),
            counters: BlobCounters::default(),
        })
    }

    /// The complete file for `hash` (which may not exist).
    pub fn path(&self, hash: &Hash) -> PathBuf {
        self.dir.join(hash.to_hex().as_str())
    }

    fn outboard_path(&self, hash: &Hash) -> PathBuf {
        self.dir.join(format!("{}.obao", hash.to_hex()))
    }

    fn partial_path(&self, hash: &Hash) -> PathBuf {
        self.dir.join("partial").join(hash.to_hex().as_str())
    }

    fn verified_path(&self, hash: &Hash) -> PathBuf {
        self.dir
            .join("partial")
            .join(format!("{}.verified", hash.to_hex()))
    }

    pub fn state(&self, hash: &Hash) -> BlobState {
        if self.path(hash).is_file() {
            return BlobState::Complete;
        }
        match self.verified(hash) {
            0 if !self.partial_path(hash).exists() => BlobState::Missing,
            n => BlobState::Partial(n),
        }
    }

    /// The verified prefix of a partial file, as its last checkpoint recorded it.
    fn verified(&self, hash: &Hash) -> u64 {
        fs::read_to_string(self.verified_path(hash))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Starts an upload: bytes written to it are hashed as they go; [`Upload::finish`]
    /// moves the file into place under its hash.
    pub fn upload(&self) -> Result<Upload<'_>, BlobError> {
        let temp = self
            .dir
            .join("partial")
            .join(format!("upload-{}", uuid::Uuid::new_v4()));
        let file = File::create(&temp)?;
        Ok(Upload {
            blobs: self,
            temp,
            file: Some(io::BufWriter::with_capacity(1 << 20, file)),

            size: 0,
        })
    }

    /// Stores `data` read to its end; returns its hash and size.
    pub fn import(&self, mut data: impl Read) -> Result<(Hash, u64), BlobError> {
        let mut upload = self.upload()?;
        let mut buf = vec![0; 1 << 16];
        loop {
            let n = data.read(&mut buf)?;
            if n == 0 {
                break;
            }
            upload.write(&buf[..n])?;
        }
        upload.finish()
    }

    /// Hashes a complete file (making its outboard in the same pass) and moves it into
    /// place under its hash, which must be `expected` if one is given. A file stored
    /// before under that hash keeps its place (the same bytes are stored once).
    fn install(&self, from: &Path, size: u64, expected: Option<&Hash>) -> Result<Hash, BlobError> {
        let tree = BaoTree::new(size, BLOCK_SIZE);
        let mut outboard = Vec::with_capacity(tree.outboard_size() as usize);
        let hash = bao_tree::io::sync::outboard_post_order(
            io::BufReader::with_capacity(1 << 20, File::open(from)?),
            tree,
            &mut outboard,
        )?;
        if expected.is_some_and(|e| *e != hash) {
            let _ = fs::remove_file(from);
            return Err(BlobError::Mismatch);
        }
        if self.complete_size(&hash) == Some(size) {
            fs::remove_file(from)?;
            return Ok(hash);
        }
        let temp = self
            .dir
            .join("partial")
            .join(format!("upload-{}.obao", uuid::Uuid::new_v4()));
        {
            let mut f = File::create(&temp)?;
            f.write_all(&outboard)?;
            f.sync_all()?;
        }
        fs::rename(&temp, self.outboard_path(&hash))?;
        fs::rename(from, self.path(&hash))?;
        File::open(&self.dir)?.sync_all()?;
        Ok(hash)
    }

    fn outboard(&self, hash: &Hash, size: u64) -> Result<PostOrderMemOutboard, BlobError> {
        let tree = BaoTree::new(size, BLOCK_SIZE);
        let data = match fs::read(self.outboard_path(hash)) {
            Ok(d) if d.len() as u64 == tree.outboard_size() => d,
            // Lost or damaged: made again from the file.
            _ => {
                let mut d = Vec::new();
                bao_tree::io::sync::outboard_post_order(
                    io::BufReader::new(File::open(self.path(hash))?),
                    tree,
                    &mut d,
                )?;
                d
            }
        };
        Ok(PostOrderMemOutboard {
            root: *hash,
            tree,
            data,
        })
    }

    /// The size of a complete file, if this store has it.
    pub fn complete_size(&self, hash: &Hash) -> Option<u64> {
        fs::metadata(self.path(hash))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Writes the bao encoding of `hash` from byte `start` (rounded down to a chunk
    /// group) to `out`. The file must be complete. A file damaged on this disk is sent as
    /// it is, and the fetcher's verification refuses it at the first damaged group.
    pub fn serve(&self, hash: &Hash, start: u64, out: impl Write) -> Result<u64, BlobError> {
        let size = self
            .complete_size(hash)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such attachment"))?;
        let outboard = self.outboard(hash, size)?;
        let file = File::open(self.path(hash))?;
        let mut counting = Counting {
            inner: out,
            bytes: 0,
            total: &self.counters.bytes_sent,
        };
        // Not validated here: the fetcher checks every group against the hash anyway,
        // and hashing on both ends would halve what two cores can move.
        bao_tree::io::sync::encode_ranges(file, outboard, &ranges_from(start), &mut counting)
            .map_err(|e| BlobError::Io(io::Error::other(e.to_string())))?;
        counting.flush()?;
        Ok(counting.bytes)
    }

    /// Claims `hash` for a fetch; `None` if another fetch of it is running.
    pub fn claim(self: &Arc<Self>, hash: Hash) -> Option<Claim> {
        let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        fetching.insert(hash).then(|| Claim {
            blobs: self.clone(),
            hash,
        })
    }

    /// Where a fetch of `hash` should start: the verified prefix, rounded down to a
    /// chunk group.
    pub fn resume_at(&self, hash: &Hash) -> u64 {
        let group = BLOCK_SIZE.bytes() as u64;
        self.verified(hash) / group * group
    }

    /// Reads the bao encoding of `hash` (of `size` bytes) from `start` (as
    /// [`Blobs::resume_at`] gave it) out of `encoded`, verifying every chunk group before
    /// it is written. Checkpoints as it goes; at the end the file is checked whole and
    /// moved into place. `rate` limits the bytes per second all of this store's fetches take together.
    pub fn receive(
        &self,
        claim: &Claim,
        size: u64,
        start: u64,
        encoded: impl Read,
        rate: Option<u64>,
    ) -> Result<(), BlobError> {
        let hash = claim.hash;
        if size > MAX_ATTACHMENT_BYTES {
            return Err(BlobError::TooLarge);
        }
        if size == 0 {
            if hash != blake3::hash(b"") {
                return Err(BlobError::Mismatch);
            }
            let temp = self.partial_path(&hash);
            File::create(&temp)?.sync_all()?;
            return self.install(&temp, 0, Some(&hash)).map(|_| ());
        }
        let partial = self.partial_path(&hash);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(&partial)?;
        let tree = BaoTree::new(size, BLOCK_SIZE);
        let ranges = ranges_from(start);
        let mut verified = start;
        let mut checkpoint = start;
        let decoder = bao_tree::io::sync::DecodeResponseIter::new(
            hash,
            tree,
            io::BufReader::with_capacity(1 << 16, encoded),
            &ranges,
        );
        for item in decoder {
            let item = item.map_err(|e| match e {
                bao_tree::io::DecodeError::Io(io) => BlobError::Io(io),
                other => {
                    self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                    BlobError::Corrupt(other.to_string())
                }
            });
            let item = match item {
                Ok(i) => i,
                Err(e) => {
                    self.save_checkpoint(&file, &hash, verified)?;
                    return Err(e);
                }
            };
            let BaoContentItem::Leaf(Leaf { offset, data }) = item else {
                continue;
            };
            file.write_all_at(&data, offset)?;
            self.counters
                .bytes_received
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            if offset == verified {
                verified += data.len() as u64;
            }
            if verified - checkpoint >= CHECKPOINT_BYTES {
                self.save_checkpoint(&file, &hash, verified)?;
                checkpoint = verified;
            }
            if let Some(rate) = rate.filter(|r| *r > 0) {
                self.pace(data.len() as u64, rate);
            }
        }
        if verified < size {
            self.save_checkpoint(&file, &hash, verified)?;
            return Err(BlobError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the transfer ended early",
            )));
        }
        file.sync_all()?;
        drop(file);
        match self.install(&partial, size, Some(&hash)) {
            Ok(_) => {
                let _ = fs::remove_file(self.verified_path(&hash));
                self.counters.completed.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // Never kept: the next fetch starts over.
                let _ = fs::remove_file(self.verified_path(&hash));
                Err(e)
            }
        }
    }

    /// Waits until `bytes` more fit in `rate` bytes per second, counted over every
    /// transfer of this store together: the limit is the node's, however many peers
    /// serve it.
    fn pace(&self, bytes: u64, rate: u64) {
        let wait = {
            let mut free = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let start = (*free).max(now);
            *free = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
            start - now
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    fn save_checkpoint(&self, file: &File, hash: &Hash, verified: u64) -> Result<(), BlobError> {
        file.sync_data()?;
        let path = self.verified_path(hash);
        let temp = path.with_extension("verified.new");
        {
            let mut f = File::create(&temp)?;
            write!(f, "{verified}")?;
            f.sync_all()?;
        }
        fs::rename(temp, path)?;
        Ok(())
    }
}

/// The chunk ranges from byte `start` to the end.
fn ranges_from(start: u64) -> ChunkRanges {
    ChunkRanges::from(ChunkNum::chunks(start)..)
}

/// A running fetch of one hash; dropping it lets another fetch start.
pub struct Claim {
    blobs: Arc<Blobs>,
    pub hash: Hash,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut fetching = self
            .blobs
            .fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        fetching.remove(&self.hash);
    }
}

/// A file being stored from a stream of bytes (see [`Blobs::upload`]).
pub struct Upload<'a> {
    blobs: &'a Blobs,
    temp: PathBuf,
    file: Option<io::BufWriter<File>>,

    size: u64,
}

impl Upload<'_> {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        self.size += bytes.len() as u64;
        if self.size > MAX_ATTACHMENT_BYTES {
            return Err(BlobError::TooLarge);
        }

        self.file
            .as_mut()
            .expect("open until finished")
            .write_all(bytes)?;
        Ok(())
    }

    /// Syncs the file and moves it into place under its hash.
    pub fn finish(mut self) -> Result<(Hash, u64), BlobError> {
        let file = self.file.take().expect("open until finished");
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        let hash = self.blobs.install(&self.temp, self.size, None)?;
        Ok((hash, self.size))
    }
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Counts what a transfer writes, into its own total and the process's as it goes (a
/// transfer cut short still counts what it sent).
struct Counting<'a, W> {
    inner: W,
    bytes: u64,
    total: &'a AtomicU64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        self.total.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 1000) as u8).collect()
    }

    /// A store to serve from and one to fetch into, with the directories that hold them.
    fn two_stores() -> ([tempfile::TempDir; 2], Blobs, Arc<Blobs>) {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let from = Blobs::open(dirs[0].path()).unwrap();
        let to = Arc::new(Blobs::open(dirs[1].path()).unwrap());
        (dirs, from, to)
    }

    fn encoded(blobs: &Blobs, hash: &Hash, start: u64) -> Vec<u8> {
        let mut out = Vec::new();
        blobs.serve(hash, start, &mut out).unwrap();
        out
    }

    #[test]
    fn an_upload_is_stored_once_under_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let bytes = data(100_000);
        let (hash, size) = blobs.import(&bytes[..]).unwrap();
        assert_eq!(hash, blake3::hash(&bytes));
        assert_eq!(size, 100_000);
        assert_eq!(blobs.state(&hash), BlobState::Complete);
        assert_eq!(fs::read(blobs.path(&hash)).unwrap(), bytes);
        let (again, _) = blobs.import(&bytes[..]).unwrap();
        assert_eq!(again, hash);
        let partial: Vec<_> = fs::read_dir(dir.path().join("partial")).unwrap().collect();
        assert!(partial.is_empty(), "no temporary file is left");
    }

    #[test]
    fn a_transfer_cut_short_resumes_from_its_last_checkpoint() {
        let (_dirs, from, to) = two_stores();
        let bytes = data(5 << 20);
        let (hash, size) = from.import(&bytes[..]).unwrap();

        // The stream stops after about 3.5 MiB.
        let whole = encoded(&from, &hash, 0);
        let claim = to.claim(hash).unwrap();
        let cut = &whole[..(3 << 20) + (1 << 19)];
        assert!(to.receive(&claim, size, 0, cut, None).is_err());
        // Everything verified before the cut is kept (the error path checkpoints too).
        let BlobState::Partial(kept) = to.state(&hash) else {
            panic!("{:?}", to.state(&hash))
        };
        assert!((3 << 20..(3 << 20) + (1 << 19)).contains(&kept), "{kept}");
        assert!(!to.path(&hash).exists(), "a partial file is never complete");

        let start = to.resume_at(&hash);
        assert_eq!(start % (16 << 10), 0);
        assert!(kept - start < 16 << 10);
        let rest = encoded(&from, &hash, start);
        assert!(
            rest.len() < whole.len() / 2,
            "only what is missing is sent again"
        );
        to.receive(&claim, size, start, &rest[..], None).unwrap();
        assert_eq!(to.state(&hash), BlobState::Complete);
        assert_eq!(fs::read(to.path(&hash)).unwrap(), bytes);
    }

    #[test]
    fn a_corrupt_group_ends_the_transfer_where_it_is() {
        let (_dirs, from, to) = two_stores();
        let bytes = data(4 << 20);
        let (hash, size) = from.import(&bytes[..]).unwrap();
        let mut whole = encoded(&from, &hash, 0);
        // One byte early in the stream (inside the second group) is flipped.
        whole[20_000] ^= 1;
        let claim = to.claim(hash).unwrap();
        let err = to.receive(&claim, size, 0, &whole[..], None).unwrap_err();
        assert!(matches!(err, BlobError::Corrupt(_)), "{err}");
        assert_eq!(to.counters.bytes_received.load(Ordering::Relaxed), 16 << 10);
        assert!(!to.path(&hash).exists());
        // The wrong size for the hash does not verify either.
        let whole = encoded(&from, &hash, 0);
        assert!(to.receive(&claim, size - 1, 0, &whole[..], None).is_err());
        assert!(!to.path(&hash).exists());
    }

    #[test]
    fn one_fetch_per_hash_and_bad_hashes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Arc::new(Blobs::open(dir.path()).unwrap());
        let hash = blake3::hash(b"x");
        let claim = blobs.claim(hash).unwrap();
        assert!(blobs.claim(hash).is_none());
        drop(claim);
        assert!(blobs.claim(hash).is_some());
        assert!(parse_hash("abc").is_err());
        assert!(parse_hash(&"g".repeat(64)).is_err());
        assert_eq!(parse_hash(&hash.to_hex()).unwrap(), hash);
    }

    #[test]
    fn an_empty_file_is_an_attachment_too() {
        let (_dirs, from, to) = two_stores();
        let (hash, size) = from.import(&b""[..]).unwrap();
        let claim = to.claim(hash).unwrap();
        to.receive(&claim, size, 0, &b""[..], None).unwrap();
        assert_eq!(to.state(&hash), BlobState::Complete);
    }
}
