//! Real iroh endpoints on loopback: a node fetches the files of the records it may see,
//! and nothing else. Node B lists the hash of a file A holds only for a record B may not
//! see, in a record of its own that it shares with A and in a document A shares with it;
//! A never serves it (a listing made by B's unit does not open a file to B), while the
//! file A attached to the shared document arrives whole and verified.

use std::sync::Arc;
use std::time::{Duration, Instant};

use iroh::SecretKey;
use sync_core::blobs::{BlobState, Blobs};
use sync_core::model::{self, Attachment, DocId, DocumentPatch, Header, Kind};
use sync_core::net::{Net, NetConfig, PeerAddr, SharedStore};
use sync_core::policy::{Member, Role};
use sync_core::roster::Roster;
use sync_core::service;
use sync_core::store::Store;
use sync_core::units::UnitCode;

fn member(unit: &str) -> Member {
    Member {
        unit: UnitCode::parse(unit).unwrap(),
        role: Role::Node,
    }
}

/// A document of `unit` for `audience`, listing `file`.
fn listing(store: &SharedStore, unit: &str, audience: &[&str], file: &Attachment) -> DocId {
    let header = Header {
        kind: Kind::Document,
        unit: unit.into(),
        audience: audience.iter().map(|u| u.to_string()).collect(),
        created_by: "test".into(),
        created_at: model::now_vietnam(),
        confidential: false,
    };
    let mut doc = model::create_document(
        &header,
        &DocumentPatch {
            subject: Some("Hồ sơ kèm theo".into()),
            ..Default::default()
        },
    )
    .unwrap();
    model::add_attachment(&mut doc, file).unwrap();
    let id = DocId::new();
    service::lock(store).put(&id, doc, &[]).unwrap();
    id
}

fn file(blobs: &Blobs, bytes: &[u8], name: &str) -> Attachment {
    let (hash, size) = blobs.import(bytes).unwrap();
    Attachment {
        hash: hash.to_hex().to_string(),
        name: name.into(),
        size,
        media_type: "application/pdf".into(),
        added_by: None,
        added_at: None,
        added_on: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_served_only_to_a_peer_that_may_see_a_record_listing_it() {
    let dir = tempfile::tempdir().unwrap();
    let (key_a, key_b) = (SecretKey::generate(), SecretKey::generate());
    let roster = Roster::parse(&format!(
        "[[member]]\nid = \"{}\"\nunit = \"18562\"\nrole = \"node\"\n\
         [[member]]\nid = \"{}\"\nunit = \"18568\"\nrole = \"node\"\n",
        key_a.public(),
        key_b.public()
    ))
    .unwrap();
    let store_a = service::share(Store::create(&dir.path().join("a.db"), "18562", "A").unwrap());
    let store_b = service::share(Store::create(&dir.path().join("b.db"), "18568", "B").unwrap());
    let blobs_a = Arc::new(Blobs::open(&dir.path().join("a-files")).unwrap());
    let blobs_b = Arc::new(Blobs::open(&dir.path().join("b-files")).unwrap());

    // A's own file, for A's unit only; and a file A shares with B.
    let private = file(&blobs_a, &vec![7u8; 300_000], "noi-bo.pdf");
    listing(&store_a, "18562", &["18562"], &private);
    let shared = file(&blobs_a, &vec![9u8; 200_000], "to-trinh.pdf");
    let plan = listing(&store_a, "18562", &["18562", "18568"], &shared);
    // B learned the private file's hash somehow and lists it in a record of its own,
    // which it shares with A: A then holds a record B may see that lists the file.
    let own = listing(&store_b, "18568", &["18568", "18562"], &private);

    let config = |me: &str, dial: Vec<(PeerAddr, Role)>, blobs: &Arc<Blobs>| NetConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        me: member(me),
        dial,
        roster: roster.clone(),
        roster_keys: vec![],
        mdns: false,
        blobs: blobs.clone(),
        attachment_rate: None,
    };
    let net_a = Net::start(key_a, store_a.clone(), config("18562", vec![], &blobs_a))
        .await
        .unwrap();
    let dial = vec![(
        PeerAddr {
            id: net_a.id(),
            addr: net_a.bound_sockets()[0],
        },
        Role::Node,
    )];
    let net_b = Net::start(key_b, store_b.clone(), config("18568", dial, &blobs_b))
        .await
        .unwrap();

    let hash = |a: &Attachment| sync_core::blobs::parse_hash(&a.hash).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !service::lock(&store_a).contains(&own).unwrap() {
        assert!(Instant::now() < deadline, "B's record never reached A");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // B also adds the hash to A's plan, which A shares with it: a listing made by B's
    // node, in a record A owns.
    while !service::lock(&store_b).contains(&plan).unwrap() {
        assert!(Instant::now() < deadline, "A's plan never reached B");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let forged = Attachment {
        added_on: Some(net_b.id().to_string()),
        ..private.clone()
    };
    service::lock(&store_b)
        .modify(&plan, |d| model::add_attachment(d, &forged))
        .unwrap();
    while model::attachments(model::At::now(
        service::lock(&store_a).get(&plan).unwrap().unwrap(),
    ))
    .len()
        < 2
    {
        assert!(Instant::now() < deadline, "B's edit never reached A");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while blobs_b.state(&hash(&shared)) != BlobState::Complete {
        assert!(Instant::now() < deadline, "the shared file never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        std::fs::read(blobs_b.path(&hash(&shared))).unwrap(),
        vec![9u8; 200_000]
    );
    // B asked for the private file as well (it is in its wanted list) and was refused:
    // nothing of it reached B, and A served only the shared file.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(blobs_b.state(&hash(&private)), BlobState::Missing);
    let sent = blobs_a
        .counters
        .bytes_sent
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent < 250_000,
        "A sent {sent} bytes: more than the shared file"
    );
    let status = service::status_json(&store_b, &net_b).unwrap();
    assert_eq!(status["attachments"]["waiting"], 1, "{status}");

    net_b.shutdown().await;
    net_a.shutdown().await;
}
