//! HTTP request bodies as the node parses and applies them: a new document's fields, a
//! PATCH (fields, a whole new body, a splice) and a new annotation. Each is refused with
//! an error or applied, and the document stays readable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_core::model::{self, DocId, DocumentPatch, Header, Kind, NewAnnotation};

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
            body: Some("Xã Thạch Hà, tỉnh Hà Tĩnh".into()),
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
        if let Ok(note) = model::create_annotation(&note_header, &DocId::new(), &doc, &input) {
            model::annotation_json(&DocId::new(), &note, &doc).expect("resolves");
        }
    }
});
