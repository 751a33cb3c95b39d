//! Automerge sync messages from a peer, raw: each input is one or more messages for the
//! shared record, answered the way a session answers them. automerge's own panics are
//! caught by the session; nothing else may panic, and the stored record stays loadable.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use sync_core::protocol::Message;

fuzz_target!(|data: &[u8]| {
    let (mut store, mut session, id) = common::node_after_hello("");
    for chunk in data.split(|b| *b == 0xfe) {
        let message = Message::Sync {
            record: id.to_string(),
            data: chunk.to_vec(),
        };
        if store.batch(|s| session.handle(s, message)).is_err() {
            break;
        }
    }
    common::still_loads(&mut store, &id);
});
