//! Automerge sync messages from a peer, raw: each input is one or more messages for the
//! shared record, answered the way a session answers them. automerge's own panics are
//! caught by the session; nothing else may panic, and the stored record stays loadable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_core::model::{self, DocId, DocumentPatch, Header, Kind};
use sync_core::policy::{Member, Role};
use sync_core::protocol::{Message, PROTOCOL_VERSION, Session};
use sync_core::store::Store;
use sync_core::units::UnitCode;

fuzz_target!(|data: &[u8]| {
    let mut store = Store::in_memory("18562").expect("store");
    let header = Header {
        kind: Kind::Document,
        unit: "18562".into(),
        audience: vec!["18562".into(), "18568".into()],
        created_by: "fuzz".into(),
        created_at: model::now_vietnam(),
        confidential: false,
    };
    let doc = model::create_document(&header, &DocumentPatch::default()).expect("document");
    let id = DocId::parse("0190f5c2-8a1b-7c3d-9e4f-001122334455").expect("id");
    store.put(&id, doc, &[]).expect("stored");
    let me = Member {
        unit: UnitCode::parse("18562").expect("unit"),
        role: Role::Node,
    };
    let mut session = Session::new(me, "peer".into(), None);
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        epoch: "e".into(),
        unit: "18568".into(),
        role: Role::Node,
        cursor: None,
    };
    store.batch(|s| session.handle(s, hello)).expect("hello");
    for chunk in data.split(|b| *b == 0xfe) {
        let message = Message::Sync {
            record: id.to_string(),
            data: chunk.to_vec(),
        };
        if store.batch(|s| session.handle(s, message)).is_err() {
            break;
        }
    }
    let held = store.get(&id).expect("readable").expect("still held");
    model::to_json(&id, held).expect("still loads");
});
