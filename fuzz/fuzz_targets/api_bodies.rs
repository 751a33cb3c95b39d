//! HTTP request bodies as the node parses and applies them: a new document's fields, a
//! PATCH (fields, a whole new body, a splice), a new annotation with a reply, a search
//! query and a lifecycle action.
//! Each is refused with an error or applied, and the document stays readable with its
//! signatures checkable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

use sync_core::lifecycle::{self, ActionRequest, Context, Registry, SeriesKey};
use sync_core::model::{self, DocId, DocumentPatch, Header, Kind, NewAnnotation};
use sync_core::users::{Actor, Directory, UserRole};

/// A register with `last` numbers given; a year before this one is closed.
struct Book {
    last: u32,
}

impl Registry for Book {
    fn is_closed(&self, key: &SeriesKey) -> Result<bool, String> {
        Ok(key.year < 2026)
    }
    fn last_number(&self, _: &SeriesKey) -> Result<u32, String> {
        Ok(self.last)
    }
}

/// Users of every role, made once (hashing a password is slow on purpose).
fn users() -> &'static [Actor] {
    static USERS: OnceLock<Vec<Actor>> = OnceLock::new();
    USERS.get_or_init(|| {
        let mut dir = Directory::in_memory().expect("in memory");
        UserRole::ALL
            .iter()
            .map(|role| {
                dir.add(role.as_str(), *role, "", "", "mật khẩu dài")
                    .expect("added");
                dir.login(role.as_str(), "mật khẩu dài").expect("signs in").1
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let header = Header {
        kind: Kind::Document,
        unit: "18562".into(),
        audience: vec!["18562".into()],
        created_by: "fuzz".into(),
        created_at: model::now_vietnam(),
        confidential: false,
    };
    let Ok(mut doc) = model::create_document(
        &header,
        &DocumentPatch {
            // Composed and decomposed letters both, so offsets can fall inside one.
            body: Some("Xã Thạch Hà, tỉnh Hà Tĩnh — Vie\u{323}\u{302}t Nam".into()),
            ..Default::default()
        },
    ) else {
        return;
    };
    if let Ok(patch) = serde_json::from_slice::<DocumentPatch>(data) {
        let _ = model::update_document(&mut doc, &patch);
        model::to_json(&DocId::new(), &doc).expect("still readable");
    }
    if let Ok(input) = serde_json::from_slice::<NewAnnotation>(data) {
        let note_header = Header {
            kind: Kind::Annotation,
            ..header
        };
        if let Ok(mut note) = model::create_annotation(&note_header, &DocId::new(), &doc, &input)
        {
            let _ = model::add_reply(&mut note, "fuzz", &input.text);
            let _ = model::set_resolved(&mut note, input.text.len() % 2 == 0, "fuzz");
            model::annotation_json(&DocId::new(), &note, &doc).expect("resolves");
        }
    }
    // Any text as a search query: the snippet's marks stay inside its text.
    if let Ok(query) = std::str::from_utf8(data) {
        let words = sync_core::search::query_words(query);
        let body = model::body_text(&doc).expect("a body");
        if let Some(s) = sync_core::search::highlight(&body, &words) {
            let len = s["text"].as_str().expect("text").chars().count() as u64;
            for m in s["marks"].as_array().expect("marks") {
                assert!(m[0].as_u64() < m[1].as_u64() && m[1].as_u64() <= Some(len), "{s}");
            }
        }
    }
    // A whole sequence of steps, each taken by every role in turn on a registrar and
    // elsewhere, so the fuzzer reaches the later states.
    if let Ok(requests) = serde_json::from_slice::<Vec<ActionRequest>>(data) {
        let id = DocId::new();
        let unit = sync_core::units::UnitCode::parse("18562").expect("a commune");
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        for (n, request) in requests.iter().take(64).enumerate() {
            for (i, actor) in users().iter().enumerate() {
                let ctx = Context {
                    actor,
                    node: "fuzz",
                    unit: &unit,
                    unit_name: "Xã Thạch Hà",
                    registrar: (n + i) % 2 == 0,
                    org_key: &key,
                };
                let book = Book {
                    last: if n % 3 == 0 { u32::MAX } else { n as u32 },
                };
                let heads = doc.get_heads();
                if lifecycle::apply(&mut doc, &id, request, &ctx, &book).is_err() {
                    assert_eq!(doc.get_heads(), heads, "a refused action changes nothing");
                }
                if n % 5 == 4 {
                    let _ = lifecycle::fulfil_request(&mut doc, Some(n as u32), "registrar");
                }
            }
        }
        model::to_json(&id, &doc).expect("still readable");
        sync_core::signature::verify_all(&id, &doc).expect("checkable");
    }
});
