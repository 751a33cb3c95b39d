//! Any text through the Markdown and plain-text importer: a document or a clear error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sync_core::import::parse_document(text);
    }
});
