//! A peer's answer to an attachment request, as the fetcher reads it: any bytes, or a
//! genuine encoding with bytes flipped, from the start or resumed from a verified prefix.
//! The fetch fails or completes; a file that appears under its hash always has that hash,
//! and a partial file never appears there.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use sync_core::blobs::{BlobState, Blobs, Hash};

const GROUP: u64 = 16 * 1024;

struct Source {
    bytes: Vec<u8>,
    hash: Hash,
    /// The genuine bao encodings from 0, 16 KiB and 32 KiB.
    encodings: Vec<Vec<u8>>,
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("cabinet-fuzz-{name}-{}", std::process::id()))
}

/// The file the fetcher wants: 40 KiB (three chunk groups), known to it by hash.
fn source() -> &'static Source {
    static SOURCE: OnceLock<Source> = OnceLock::new();
    SOURCE.get_or_init(|| {
        let bytes: Vec<u8> = (0..40 * 1024).map(|i| (i * 31 % 251) as u8).collect();
        let blobs = Blobs::open(&scratch("source")).expect("a directory");
        let (hash, _) = blobs.import(&bytes[..]).expect("stored");
        let encodings = (0..3)
            .map(|k| {
                let mut out = Vec::new();
                blobs.serve(&hash, k * GROUP, &mut out).expect("served");
                out
            })
            .collect();
        Source {
            bytes,
            hash,
            encodings,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let src = source();
    let dir = scratch("fetch");
    let _ = std::fs::remove_dir_all(&dir);
    let blobs = Arc::new(Blobs::open(&dir).expect("a directory"));
    let claim = blobs.claim(src.hash).expect("not claimed");
    // The first byte chooses where the fetch resumes, whether the size is the true one,
    // and whether the rest is the stream itself or flips bytes of the genuine one.
    let (choice, rest) = data.split_first().unwrap_or((&0, &[]));
    let k = usize::from(choice % 3);
    let start = k as u64 * GROUP;
    let size = src.bytes.len() as u64 + u64::from(choice / 3 % 2);
    let stream: Vec<u8> = if choice & 0x80 != 0 {
        let mut s = src.encodings[k].clone();
        for (i, b) in rest.iter().enumerate() {
            match s.get_mut(i) {
                Some(x) => *x ^= b,
                None => s.push(*b),
            }
        }
        s
    } else {
        rest.to_vec()
    };
    let result = blobs.receive(&claim, size, start, &stream[..], None);
    match blobs.state(&src.hash) {
        BlobState::Complete => {
            assert!(result.is_ok(), "complete only when the fetch succeeded");
            assert_eq!(std::fs::read(blobs.path(&src.hash)).unwrap(), src.bytes);
        }
        _ => assert!(result.is_err(), "a fetch that succeeded leaves the file complete"),
    }
    drop(claim);
    let _ = std::fs::remove_dir_all(&dir);
});
