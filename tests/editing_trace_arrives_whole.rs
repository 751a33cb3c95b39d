//! The real keystroke trace of a 104,852-character paper, applied to one document's body
//! on node A through sync-core in batches while A runs, arrives on B with exactly the
//! trace's final text.

use std::io::Read;
use std::time::Duration;

use scenario::{ThreeSites, UNIT_A, UNIT_B, shared_data, wait_for};
use serde_json::Value;
use sync_core::model::{self, DocId, DocumentPatch, Header, Kind};
use sync_core::store::Store;

/// Edits per stored change: large enough to finish quickly, small enough that sync runs
/// while the trace is still being applied.
const BATCH: usize = 5_000;

fn load_trace() -> Value {
    let file = std::fs::File::open(shared_data().join("traces/automerge-paper.json.gz")).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_automerge_paper_trace_arrives_on_b_exactly() {
    let trace = load_trace();
    let patches: Vec<(usize, usize, String)> = trace["txns"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["patches"].as_array().unwrap().iter())
        .map(|p| {
            (
                p[0].as_u64().unwrap() as usize,
                p[1].as_u64().unwrap() as usize,
                p[2].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(patches.len(), 259_778);
    let end = trace["endContent"].as_str().unwrap();

    let mut sites = ThreeSites::new();
    sites.start_all();

    // A second writer on A's store, beside the running node, as an import would be.
    let mut store = Store::open(&sites.a.data.join("store.db")).unwrap();
    let header = Header {
        kind: Kind::Document,
        unit: UNIT_A.into(),
        audience: vec![UNIT_A.into(), UNIT_B.into()],
        created_by: "trace".into(),
        created_at: model::now_vietnam(),
        confidential: false,
    };
    let doc = model::create_document(
        &header,
        &DocumentPatch {
            subject: Some("automerge-perf paper trace".into()),
            body: Some(trace["startContent"].as_str().unwrap().into()),
            ..Default::default()
        },
    )
    .unwrap();
    let id = DocId::new();
    store.put(&id, doc, &[]).unwrap();
    for batch in patches.chunks(BATCH) {
        store
            .modify(&id, |d| {
                model::splice_body_batch(d, batch.iter().map(|(p, n, i)| (*p, *n, i.as_str())))
            })
            .unwrap();
    }
    let local = model::body_text(store.get(&id).unwrap().unwrap()).unwrap();
    assert_eq!(local, end, "the trace replays to its end content on A");

    let path = format!("/api/v1/documents/{id}");
    wait_for("B to hold the final text", Duration::from_secs(180), || {
        let r = sites.b.try_get(&path).ok().filter(|r| r.status == 200)?;
        (r.body["body"].as_str() == Some(end)).then_some(())
    });
    assert_eq!(sites.b.get(&path)["heads"], sites.a.get(&path)["heads"]);
}
