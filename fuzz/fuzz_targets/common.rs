//! What the session targets share: a node's store holding one document shared with the
//! fuzzing peer, and a session with that peer past its Hello.

use sync_core::model::{self, DocId, DocumentPatch, Header, Kind};
use sync_core::policy::{Member, Role};
use sync_core::protocol::{Message, PROTOCOL_VERSION, Session};
use sync_core::store::Store;
use sync_core::units::UnitCode;

/// Node 18562 holding one document with `body`, shared with 18568, and a session with a
/// peer of 18568 that has said Hello.
pub fn node_after_hello(body: &str) -> (Store, Session, DocId) {
    let mut store = Store::in_memory("18562").expect("store");
    let header = Header {
        kind: Kind::Document,
        unit: "18562".into(),
        audience: vec!["18562".into(), "18568".into()],
        created_by: "fuzz".into(),
        created_at: model::now_vietnam(),
        confidential: false,
    };
    let fields = DocumentPatch {
        body: Some(body.into()),
        ..Default::default()
    };
    let doc = model::create_document(&header, &fields).expect("document");
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
        rosters: vec![],
    };
    store.batch(|s| session.handle(s, hello)).expect("hello");
    (store, session, id)
}

/// The document is still held and still loads, whatever the peer sent.
pub fn still_loads(store: &mut Store, id: &DocId) {
    let held = store.get(id).expect("readable").expect("still held");
    model::to_json(id, held).expect("still loads");
}
