//! A hostile peer's whole session: a Hello, then any sequence of decoded messages, into a
//! node's session over a store holding one shared document. Every input ends in replies
//! or a protocol error; the store keeps its record, which stays loadable.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use sync_core::protocol::Message;

fuzz_target!(|data: &[u8]| {
    let (mut store, mut session, id) = common::node_after_hello("Điều 1.");
    // The input is a sequence of frames: a two-byte length, then that many bytes.
    let mut rest = data;
    while rest.len() >= 2 {
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let frame = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        let Ok(message) = Message::decode(frame) else {
            break;
        };
        if store.batch(|s| session.handle(s, message)).is_err() {
            break;
        }
    }
    common::still_loads(&mut store, &id);
});
