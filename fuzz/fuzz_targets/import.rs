//! Any text through the Markdown and plain-text importer, and through the table
//! importer (with a file name taken from the text's first characters): a document or a
//! clear error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sync_core::import::parse_document(text);
        let stem: String = text.chars().take(12).collect();
        let _ = sync_core::import::parse_table(text, &stem);
    }
});
