//! Real iroh endpoints on loopback: a node not on the roster is refused before it can say
//! anything, a peer that sends a malformed frame or a 4 GiB length prefix loses only its
//! own session, and a legitimate peer keeps syncing throughout.

use std::time::{Duration, Instant};

use iroh::endpoint::{ConnectionError, presets};
use iroh::{Endpoint, EndpointAddr, SecretKey};
use sync_core::model::{self, DocId, DocumentPatch, Header, Kind};
use sync_core::net::{Net, NetConfig, PeerAddr, SharedStore};
use sync_core::policy::{Member, Role};
use sync_core::protocol::{ALPN, Message, PROTOCOL_VERSION};
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

fn roster(entries: &[(&SecretKey, &str)]) -> Roster {
    let text: String = entries
        .iter()
        .map(|(k, u)| {
            format!(
                "[[member]]\nid = \"{}\"\nunit = \"{u}\"\nrole = \"node\"\n",
                k.public()
            )
        })
        .collect();
    Roster::parse(&text).unwrap()
}

async fn raw_endpoint(key: SecretKey) -> Endpoint {
    Endpoint::builder(presets::Minimal)
        .secret_key(key)
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")
        .unwrap()
        .bind()
        .await
        .unwrap()
}

fn create(store: &SharedStore, subject: &str) -> DocId {
    let header = Header {
        kind: Kind::Document,
        unit: "18562".into(),
        audience: vec!["18562".into(), "18568".into()],
        created_by: "test".into(),
        created_at: model::now_vietnam(),
        confidential: false,
    };
    let doc = model::create_document(
        &header,
        &DocumentPatch {
            subject: Some(subject.into()),
            ..Default::default()
        },
    )
    .unwrap();
    let id = DocId::new();
    service::lock(store).put(&id, doc, &[]).unwrap();
    id
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn close_code(e: &ConnectionError) -> Option<u64> {
    match e {
        ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_end_only_their_own_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let (key_a, key_b, key_c) = (
        SecretKey::generate(),
        SecretKey::generate(),
        SecretKey::generate(),
    );
    let rogue = SecretKey::generate();
    // C is on A's roster (for commune 18583) but misbehaves.
    let roster_a = roster(&[(&key_b, "18568"), (&key_c, "18583")]);
    let store_a = service::share(Store::create(&dir.path().join("a.db"), "18562", "A").unwrap());
    let store_b = service::share(Store::create(&dir.path().join("b.db"), "18568", "B").unwrap());
    let id_a = key_a.public();
    let net_a = Net::start(
        key_a,
        store_a.clone(),
        NetConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            me: member("18562"),
            dial: vec![],
            roster: roster_a,
            roster_keys: vec![],
            mdns: false,
            blobs: attachment_files(dir.path()),
            attachment_rate: None,
        },
    )
    .await
    .unwrap();
    let addr_a = net_a.bound_sockets()[0];
    let net_b = Net::start(
        key_b,
        store_b.clone(),
        NetConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            me: member("18568"),
            dial: vec![(
                PeerAddr {
                    id: id_a,
                    addr: addr_a,
                },
                Role::Node,
            )],
            roster: Roster::default(),
            roster_keys: Vec::new(),
            mdns: false,
            blobs: attachment_files(dir.path()),
            attachment_rate: None,
        },
    )
    .await
    .unwrap();
    let first = create(&store_a, "trước");
    wait_until("B to receive the first record", || {
        service::lock(&store_b).contains(&first).unwrap()
    })
    .await;

    // A node with a valid key that is not on the roster is refused at once.
    let rogue_ep = raw_endpoint(rogue).await;
    let conn = rogue_ep
        .connect(EndpointAddr::new(id_a).with_ip_addr(addr_a), ALPN)
        .await
        .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("rogue connection closed by A");
    assert_eq!(close_code(&reason), Some(1), "{reason:?}");

    // A roster member sending garbage, then one claiming a 4 GiB frame.
    let c_ep = raw_endpoint(key_c).await;
    let garbage: [&[u8]; 2] = [
        &[0, 0, 0, 3, 0xff, 0xff, 0xff],
        &[0xff, 0xff, 0xff, 0xff, 1, 2, 3],
    ];
    for bytes in garbage {
        let conn = c_ep
            .connect(EndpointAddr::new(id_a).with_ip_addr(addr_a), ALPN)
            .await
            .unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            epoch: "c".into(),
            unit: "18583".into(),
            role: Role::Node,
            cursor: None,
            rosters: vec![],
        }
        .encode();
        send.write_all(&(hello.len() as u32).to_be_bytes())
            .await
            .unwrap();
        send.write_all(&hello).await.unwrap();
        send.write_all(bytes).await.unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("faulty session closed by A");
        assert_eq!(close_code(&reason), Some(2), "{reason:?}");
    }

    // A and B still sync as before, and nothing from C was stored.
    let second = create(&store_a, "sau");
    wait_until("B to receive the second record", || {
        service::lock(&store_b).contains(&second).unwrap()
    })
    .await;
    assert_eq!(service::lock(&store_a).count().unwrap(), 2);
    let b_status = net_a
        .status()
        .into_iter()
        .find(|p| p.id == net_b.id().to_string())
        .unwrap();
    assert!(b_status.connected);
    net_b.shutdown().await;
    net_a.shutdown().await;
}

/// A fresh directory of attachment files for one endpoint under `root`.
fn attachment_files(root: &std::path::Path) -> std::sync::Arc<sync_core::blobs::Blobs> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = root.join(format!("attachments-{}", N.fetch_add(1, Ordering::Relaxed)));
    std::sync::Arc::new(sync_core::blobs::Blobs::open(&dir).unwrap())
}
