//! A hostile peer's whole session: a Hello, then any sequence of decoded messages, into a
//! node's session over a store holding one shared document. Every input ends in replies
//! or a protocol error; the store keeps its record, which stays loadable.
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
    let doc = model::create_document(
        &header,
        &DocumentPatch {
            body: Some("Điều 1.".into()),
            ..Default::default()
        },
    )
    .expect("document");
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
    if store.batch(|s| session.handle(s, hello)).is_err() {
        return;
    }
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
    let held = store.get(&id).expect("readable").expect("still held");
    model::to_json(&id, held).expect("still loads");
});
