//! The protocol between in-memory stores, with messages carried by hand.

use std::collections::VecDeque;

use super::*;
use crate::model::{DocumentPatch, Header, Kind};

struct Side {
    id: String,
    store: Store,
    session: Session,
    inbox: VecDeque<Message>,
}

fn member(unit: &str, role: Role) -> Member {
    Member {
        unit: UnitCode::parse(unit).unwrap(),
        role,
    }
}

fn side(id: &str, me: Member, peer_id: &str) -> Side {
    Side {
        id: id.into(),
        store: Store::in_memory(me.unit.as_str()).unwrap(),
        session: Session::new(me, peer_id.into(), None),
        inbox: VecDeque::new(),
    }
}

fn restart_session(s: &mut Side, me: Member, peer_id: &str) {
    s.session = Session::new(me, peer_id.into(), None);
    s.inbox.clear();
}

/// Starts both sessions and carries messages until both sides go quiet. Returns how many
/// messages crossed; panics if they never stop (a loop).
fn run(a: &mut Side, b: &mut Side) -> usize {
    b.inbox.extend(a.session.start(&a.store).unwrap());
    a.inbox.extend(b.session.start(&b.store).unwrap());
    pump(a, b)
}

fn pump(a: &mut Side, b: &mut Side) -> usize {
    let mut crossed = 0;
    for _ in 0..10_000 {
        let moved = step(a, b) | step(b, a);
        crossed += moved as usize;
        if !moved && a.inbox.is_empty() && b.inbox.is_empty() {
            return crossed;
        }
    }
    panic!("the sessions never went quiet: a message loop");
}

/// Lets `from` look at its store and handle one message from its inbox; what it sends
/// lands in `to`'s inbox. Returns whether a message was handled.
fn step(from: &mut Side, to: &mut Side) -> bool {
    let out = from.session.poll_local(&mut from.store).unwrap();
    to.inbox.extend(out);
    let Some(m) = from.inbox.pop_front() else {
        return false;
    };
    // Every message survives a trip through its wire encoding.
    let m = Message::decode(&m.encode()).unwrap();
    let out = from.store.batch(|s| from.session.handle(s, m)).unwrap();
    to.inbox.extend(out);
    true
}

fn header(unit: &str, audience: &[&str]) -> Header {
    Header {
        kind: Kind::Document,
        unit: unit.into(),
        audience: audience.iter().map(|s| s.to_string()).collect(),
        created_by: "test".into(),
        created_at: model::now_vietnam(),
        confidential: false,
    }
}

fn create(store: &mut Store, h: &Header, subject: &str) -> DocId {
    let id = DocId::new();
    let doc = model::create_document(
        h,
        &DocumentPatch {
            subject: Some(subject.into()),
            body: Some(format!("Nội dung của {subject}")),
            ..Default::default()
        },
    )
    .unwrap();
    store.put(&id, doc, &[]).unwrap();
    id
}

fn json(store: &mut Store, id: &DocId) -> serde_json::Value {
    model::to_json(id, store.get(id).unwrap().expect("record present")).unwrap()
}

const A: &str = "18562";
const B: &str = "18568";
const CLUSTER: &str = "42-445";

#[test]
fn two_nodes_exchange_shared_records_and_keep_private_ones() {
    let mut a = side("a", member(A, Role::Node), "b");
    let mut b = side("b", member(B, Role::Node), "a");
    let shared = create(&mut a.store, &header(A, &[A, B]), "chung");
    let own = create(&mut a.store, &header(A, &[]), "riêng");
    let from_b = create(&mut b.store, &header(B, &[A]), "từ B");
    run(&mut a, &mut b);
    assert_eq!(json(&mut a.store, &shared), json(&mut b.store, &shared));
    assert_eq!(json(&mut a.store, &from_b), json(&mut b.store, &from_b));
    assert!(!b.store.contains(&own).unwrap());
    assert_eq!(b.store.count().unwrap(), 2);
    assert_eq!(a.store.count().unwrap(), 3);
    assert!(a.session.is_idle() && b.session.is_idle());
}

#[test]
fn concurrent_edits_merge_and_converge_to_identical_heads() {
    let mut a = side("a", member(A, Role::Node), "b");
    let mut b = side("b", member(B, Role::Node), "a");
    let id = create(&mut a.store, &header(A, &[A, B]), "gốc");
    run(&mut a, &mut b);

    a.store
        .modify(&id, |d| {
            model::update_document(
                d,
                &DocumentPatch {
                    subject: Some("sửa ở A".into()),
                    ..Default::default()
                },
            )
        })
        .unwrap();
    b.store
        .modify(&id, |d| model::splice_body(d, 0, 0, "B viết thêm. "))
        .unwrap();
    restart_session(&mut a, member(A, Role::Node), "b");
    restart_session(&mut b, member(B, Role::Node), "a");
    run(&mut a, &mut b);
    let ja = json(&mut a.store, &id);
    assert_eq!(ja, json(&mut b.store, &id));
    assert_eq!(ja["subject"], "sửa ở A");
    assert!(ja["body"].as_str().unwrap().starts_with("B viết thêm. "));
    assert_eq!(ja["heads"].as_array().unwrap().len(), 2);
}

#[test]
fn a_reconnect_offers_only_what_changed_since_the_cursor() {
    let mut a = side("a", member(A, Role::Node), "b");
    let mut b = side("b", member(B, Role::Node), "a");
    let ids: Vec<DocId> = (0..50)
        .map(|i| create(&mut a.store, &header(A, &[B]), &format!("văn bản {i}")))
        .collect();
    run(&mut a, &mut b);
    assert_eq!(b.store.count().unwrap(), 50);

    a.store
        .modify(&ids[7], |d| model::splice_body(d, 0, 0, "mới "))
        .unwrap();
    restart_session(&mut a, member(A, Role::Node), "b");
    restart_session(&mut b, member(B, Role::Node), "a");
    let crossed = run(&mut a, &mut b);
    // Two hellos, a few messages for the one changed record, progress: far fewer than 50.
    assert!(crossed < 12, "{crossed} messages for one changed record");
    assert_eq!(json(&mut a.store, &ids[7]), json(&mut b.store, &ids[7]));
}

#[test]
fn a_peer_whose_store_was_wiped_gets_everything_back() {
    let mut a = side("a", member(A, Role::Node), "b");
    let mut b = side("b", member(B, Role::Node), "a");
    for i in 0..20 {
        create(&mut a.store, &header(A, &[B]), &format!("vb {i}"));
    }
    run(&mut a, &mut b);
    // B loses its store and starts with a new epoch; A still holds B's old cursor.
    b.store = Store::in_memory(B).unwrap();
    restart_session(&mut a, member(A, Role::Node), "b");
    restart_session(&mut b, member(B, Role::Node), "a");
    run(&mut a, &mut b);
    assert_eq!(b.store.count().unwrap(), 20);
}

#[test]
fn a_relay_carries_records_between_nodes_that_never_meet() {
    // A ↔ R, then R ↔ B: A and B are never connected at the same time.
    let relay = member(CLUSTER, Role::Relay);
    let mut a = side("a", member(A, Role::Node), "r");
    let mut r_for_a = side("r", relay.clone(), "a");
    let id = create(&mut a.store, &header(A, &[A, B]), "qua relay");
    let own = create(&mut a.store, &header(A, &[]), "chỉ A");
    run(&mut a, &mut r_for_a);
    assert!(r_for_a.store.contains(&id).unwrap());
    assert!(!r_for_a.store.contains(&own).unwrap());

    let mut r_for_b = Side {
        id: "r".into(),
        store: r_for_a.store,
        session: Session::new(relay, "b".into(), None),
        inbox: VecDeque::new(),
    };
    let mut b = side("b", member(B, Role::Node), "r");
    run(&mut r_for_b, &mut b);
    assert_eq!(json(&mut r_for_b.store, &id)["subject"], "qua relay");
    assert_eq!(json(&mut b.store, &id)["subject"], "qua relay");
}

#[test]
fn a_peer_cannot_write_into_a_record_of_a_unit_it_does_not_belong_to() {
    // B forges a record owned by A's unit, visible to A only.
    let mut a = side("a", member(A, Role::Node), "b");
    let mut b = side("b", member(B, Role::Node), "a");
    let forged = create(&mut b.store, &header(A, &[A]), "giả mạo");
    // B's own policy would never offer it; push it by hand as a hostile peer would.
    b.inbox.extend(a.session.start(&a.store).unwrap());
    a.inbox.extend(b.session.start(&b.store).unwrap());
    pump(&mut a, &mut b);
    let doc = b.store.get(&forged).unwrap().unwrap().clone();
    let mut state = sync::State::new();
    let mut hostile = Session::new(member(B, Role::Node), "a".into(), None);
    let mut out = Vec::new();
    // Walk the automerge exchange by hand, always answering as B would.
    let mut to_a = vec![Message::Sync {
        record: forged.to_string(),
        data: doc.generate_sync_message(&mut state).unwrap().encode(),
    }];
    for _ in 0..6 {
        for m in to_a.drain(..) {
            out.extend(a.store.batch(|s| a.session.handle(s, m)).unwrap());
        }
        for m in out.drain(..) {
            if let Message::Sync { data, .. } = m {
                let mut d = doc.clone();
                d.receive_sync_message(&mut state, sync::Message::decode(&data).unwrap())
                    .unwrap();
                if let Some(reply) = d.generate_sync_message(&mut state) {
                    to_a.push(Message::Sync {
                        record: forged.to_string(),
                        data: reply.encode(),
                    });
                }
            }
        }
    }
    let _ = hostile.poll_local(&mut b.store);
    assert!(!a.store.contains(&forged).unwrap());
    assert!(a.session.stats().changes_refused >= 1);
}

#[test]
fn garbage_ends_the_session_without_touching_the_store() {
    let mut a = side("a", member(A, Role::Node), "b");
    let before = a.store.count().unwrap();
    assert!(Message::decode(&[0xff, 0xff, 0xff]).is_err());
    let r = a.store.batch(|s| {
        a.session.handle(
            s,
            Message::Sync {
                record: DocId::new().to_string(),
                data: vec![1, 2, 3],
            },
        )
    });
    assert!(matches!(r, Err(ProtocolError::NoHello)));
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        epoch: "e".into(),
        unit: B.into(),
        role: Role::Node,
        cursor: None,
        rosters: vec![],
    };
    a.store
        .batch(|s| a.session.handle(s, hello.clone()))
        .unwrap();
    let r = a.store.batch(|s| {
        a.session.handle(
            s,
            Message::Sync {
                record: DocId::new().to_string(),
                data: vec![0x42, 9, 9, 9],
            },
        )
    });
    assert!(matches!(r, Err(ProtocolError::BadSyncMessage { .. })));
    let r = a.store.batch(|s| {
        a.session.handle(
            s,
            Message::Sync {
                record: "../etc".into(),
                data: vec![],
            },
        )
    });
    assert!(matches!(r, Err(ProtocolError::BadRecordId)));
    assert!(matches!(
        a.store.batch(|s| a.session.handle(s, hello)),
        Err(ProtocolError::DuplicateHello)
    ));
    assert_eq!(a.store.count().unwrap(), before);
    let _ = a.id;
}

#[test]
fn a_forged_copy_of_a_hidden_record_neither_writes_into_it_nor_learns_of_it() {
    // A holds a commune-only record; B has learnt its id and builds its own record under
    // that id, owned by A's unit and claiming B in its audience.
    let mut a = side("a", member(A, Role::Node), "b");
    let mut b = side("b", member(B, Role::Node), "a");
    let secret = create(&mut a.store, &header(A, &[]), "chỉ của xã A");
    let before = json(&mut a.store, &secret);
    let forged = model::create_document(
        &header(A, &[A, B]),
        &DocumentPatch {
            subject: Some("giả mạo".into()),
            ..Default::default()
        },
    )
    .unwrap();
    b.store.put(&secret, forged, &[]).unwrap();
    b.session.send_foreign_records();

    run(&mut a, &mut b);

    assert_eq!(json(&mut a.store, &secret), before);
    let on_b = json(&mut b.store, &secret);
    assert_eq!(on_b["subject"], "giả mạo");
    assert!(!on_b.to_string().contains("chỉ của xã A"));
    assert!(a.session.stats().changes_refused >= 1);
    // The stored copy, reloaded from disk, is A's own too.
    let mut reopened = a.store;
    reopened.set_cache_capacity(1);
    let other = create(&mut reopened, &header(A, &[]), "đẩy bộ nhớ đệm");
    let _ = json(&mut reopened, &other);
    assert_eq!(json(&mut reopened, &secret)["heads"], before["heads"]);
}

#[test]
fn a_refused_change_ends_the_exchange_for_that_record_and_nothing_else() {
    let mut a = side("a", member(A, Role::Node), "b");
    let mut b = side("b", member(B, Role::Node), "a");
    let shared = create(&mut a.store, &header(A, &[A, B]), "chung");
    run(&mut a, &mut b);
    let before = json(&mut a.store, &shared);

    // B rewrites who created A's record (no honest client does), and also creates a
    // record of its own that A may receive.
    b.store
        .modify(&shared, |d| {
            use automerge::ReadDoc;
            use automerge::transaction::Transactable;
            let (_, h) = d.get(automerge::ROOT, "header")?.expect("header");
            let mut tx = d.transaction();
            tx.put(&h, "created_by", "kẻ gian")?;
            tx.commit();
            Ok(())
        })
        .unwrap();
    let fresh = create(&mut b.store, &header(B, &[A, B]), "mới từ B");
    restart_session(&mut a, member(A, Role::Node), "b");
    restart_session(&mut b, member(B, Role::Node), "a");
    run(&mut a, &mut b);

    assert_eq!(json(&mut a.store, &shared), before);
    assert_eq!(json(&mut a.store, &fresh), json(&mut b.store, &fresh));
    assert!(a.session.stats().changes_refused >= 1);
    // B was told: it holds nothing in flight and its cursor moved on.
    assert_eq!(b.session.pending_out(), 0);
    assert!(b.session.is_idle());
}

/// Ends both sessions as a closed connection does: each side keeps its sync states.
fn disconnect(a: &mut Side, b: &mut Side) {
    a.session.persist_states(&mut a.store).unwrap();
    b.session.persist_states(&mut b.store).unwrap();
    a.inbox.clear();
    b.inbox.clear();
}

#[test]
fn a_lost_reply_and_an_immediate_reconnect_converge_in_a_few_round_trips_then_go_quiet() {
    let mut a = side("a", member(A, Role::Node), "b");
    let mut b = side("b", member(B, Role::Node), "a");
    let ids: Vec<DocId> = (0..10)
        .map(|i| create(&mut a.store, &header(A, &[B]), &format!("vb {i}")))
        .collect();
    b.inbox.extend(a.session.start(&a.store).unwrap());
    a.inbox.extend(b.session.start(&b.store).unwrap());
    // Carry messages until B has stored something and answered, then lose that answer
    // and everything after it: the connection dies.
    while b.store.count().unwrap() < 3 {
        assert!(step(&mut a, &mut b) | step(&mut b, &mut a), "stalled");
    }
    disconnect(&mut a, &mut b);

    // B reconnects at once with the same identity.
    restart_session(&mut a, member(A, Role::Node), "b");
    restart_session(&mut b, member(B, Role::Node), "a");
    let crossed = run(&mut a, &mut b);
    for id in &ids {
        assert_eq!(json(&mut a.store, id), json(&mut b.store, id));
    }
    assert!(a.session.is_idle() && b.session.is_idle());
    // A few messages per record, not an exchange that repeats itself.
    assert!(
        crossed < 6 * ids.len(),
        "{crossed} messages for {} records",
        ids.len()
    );

    // And the next reconnect has nothing to say beyond hellos.
    disconnect(&mut a, &mut b);
    restart_session(&mut a, member(A, Role::Node), "b");
    restart_session(&mut b, member(B, Role::Node), "a");
    let quiet = run(&mut a, &mut b);
    assert!(
        quiet <= 4,
        "{quiet} messages between two peers that are in sync"
    );
}

#[test]
fn changes_held_back_by_the_network_arrive_later_and_are_never_counted_as_sent() {
    let mut a = side("a", member(A, Role::Node), "b");
    let mut b = side("b", member(B, Role::Node), "a");
    let first = create(&mut a.store, &header(A, &[B]), "trước");
    run(&mut a, &mut b);
    let confirmed = a.store.peer("b").unwrap().delivered;
    assert_eq!(confirmed, a.store.max_seq().unwrap());

    // The link stays up but nothing A sends gets through for a while; A keeps working.
    let mut held = VecDeque::new();
    let mut later = Vec::new();
    for i in 0..5 {
        later.push(create(&mut a.store, &header(A, &[B]), &format!("sau {i}")));
        a.store
            .modify(&first, |d| model::splice_body(d, 0, 0, &format!("{i} ")))
            .unwrap();
        held.extend(a.session.poll_local(&mut a.store).unwrap());
        // B hears nothing, so nothing of it may be counted as delivered: every record
        // A last changed at or below the seq it says B holds is on B as it is on A.
        let delivered = a.store.peer("b").unwrap().delivered;
        for meta in a.store.changed_since(0, 1000).unwrap() {
            if meta.seq <= delivered {
                assert_eq!(json(&mut a.store, &meta.id), json(&mut b.store, &meta.id));
            }
        }
        assert!(a.session.pending_out() > 0);
    }
    assert_eq!(b.store.peer("a").unwrap().cursor, confirmed);

    // The network recovers without any restart: what was held arrives, in order.
    b.inbox.extend(held);
    pump(&mut a, &mut b);
    for id in later.iter().chain([&first]) {
        assert_eq!(json(&mut a.store, id), json(&mut b.store, id));
    }
    assert!(a.session.is_idle());
    assert_eq!(
        b.store.peer("a").unwrap().cursor,
        a.store.max_seq().unwrap(),
        "B's cursor reaches A's last change once it all arrived"
    );
}

#[test]
fn a_wiped_peer_with_sync_states_on_record_still_gets_everything_back() {
    let mut a = side("a", member(A, Role::Node), "b");
    let mut b = side("b", member(B, Role::Node), "a");
    let ids: Vec<DocId> = (0..10)
        .map(|i| create(&mut a.store, &header(A, &[B]), &format!("vb {i}")))
        .collect();
    run(&mut a, &mut b);
    disconnect(&mut a, &mut b);
    // B's disk is replaced; A still remembers what B had, record by record.
    b.store = Store::in_memory(B).unwrap();
    restart_session(&mut a, member(A, Role::Node), "b");
    restart_session(&mut b, member(B, Role::Node), "a");
    run(&mut a, &mut b);
    for id in &ids {
        assert_eq!(json(&mut a.store, id), json(&mut b.store, id));
    }
}

/// An annotation on `doc` for everyone in its audience, stored.
fn add_note(store: &mut Store, doc: &DocId) -> DocId {
    let mut note_header = header(A, &[A, B]);
    note_header.kind = Kind::Annotation;
    let input = model::NewAnnotation {
        text: "cần sửa".into(),
        anchor: None,
        visibility: model::Visibility::Audience,
        shared_with: vec![],
        author: None,
    };
    let target = store.get(doc).unwrap().unwrap().clone();
    let note = DocId::new();
    let n = model::create_annotation(&note_header, doc, &target, &input).unwrap();
    store.put(&note, n, &[]).unwrap();
    note
}

/// Sets who may see `doc`.
fn share(store: &mut Store, doc: &DocId, audience: &[&str]) {
    let patch = DocumentPatch {
        audience: Some(audience.iter().map(|u| u.to_string()).collect()),
        ..Default::default()
    };
    store
        .modify(doc, |d| model::update_document(d, &patch))
        .unwrap();
}

#[test]
fn a_note_never_travels_where_its_document_may_not() {
    let mut a = side("a", member(A, Role::Node), "b");
    let mut b = side("b", member(B, Role::Node), "a");
    let doc = create(&mut a.store, &header(A, &[A, B]), "dự thảo");
    let note = add_note(&mut a.store, &doc);
    // The draft is taken back to the commune before anything synced; the note, whose own
    // header still names B, stays with it.
    share(&mut a.store, &doc, &[A]);
    run(&mut a, &mut b);
    assert!(!b.store.contains(&doc).unwrap());
    assert!(!b.store.contains(&note).unwrap());
    assert_eq!(b.store.count().unwrap(), 0);
}

#[test]
fn a_store_restored_from_an_older_backup_gets_back_what_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let backup = dir.path().join("backup.db");
    let me_a = member(A, Role::Node);
    let mut a = Side {
        id: "a".into(),
        store: Store::create(&path, A, "A").unwrap(),
        session: Session::new(me_a.clone(), "b".into(), None),
        inbox: VecDeque::new(),
    };
    // Its cluster relay carries A's records for B, and gives them back.
    let mut b = side("b", member(CLUSTER, Role::Relay), "a");
    let early = create(&mut a.store, &header(A, &[B]), "trước khi sao lưu");
    run(&mut a, &mut b);
    disconnect(&mut a, &mut b);
    // The backup: the store closed (its log folded in) and its file copied.
    a.store = Store::in_memory(A).unwrap();
    std::fs::copy(&path, &backup).unwrap();
    a.store = Store::open(&path).unwrap();

    // After the backup A writes more, and B receives it all, and remembers that A had it.
    let late = create(&mut a.store, &header(A, &[B]), "sau khi sao lưu");
    a.store
        .modify(&early, |d| model::splice_body(d, 0, 0, "sửa sau. "))
        .unwrap();
    restart_session(&mut a, me_a.clone(), "b");
    restart_session(&mut b, member(CLUSTER, Role::Relay), "a");
    run(&mut a, &mut b);
    disconnect(&mut a, &mut b);

    // A's disk dies; the backup is put back.
    a.store = Store::in_memory(A).unwrap();
    std::fs::copy(&backup, &path).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("a.db{suffix}")));
    }
    a.store = Store::open(&path).unwrap();
    assert!(!a.store.contains(&late).unwrap());
    restart_session(&mut a, me_a, "b");
    restart_session(&mut b, member(CLUSTER, Role::Relay), "a");
    run(&mut a, &mut b);
    for id in [&early, &late] {
        assert_eq!(json(&mut a.store, id), json(&mut b.store, id));
    }
    assert!(
        json(&mut a.store, &early)["body"]
            .as_str()
            .unwrap()
            .starts_with("sửa sau. ")
    );
}

#[test]
fn a_note_held_back_with_its_document_follows_it_when_it_is_shared_again() {
    let mut a = side("a", member(A, Role::Node), "b");
    let mut b = side("b", member(B, Role::Node), "a");
    let doc = create(&mut a.store, &header(A, &[A, B]), "dự thảo");
    let note = add_note(&mut a.store, &doc);
    share(&mut a.store, &doc, &[A]);
    run(&mut a, &mut b);
    assert!(!b.store.contains(&note).unwrap());

    share(&mut a.store, &doc, &[A, B]);
    disconnect(&mut a, &mut b);
    restart_session(&mut a, member(A, Role::Node), "b");
    restart_session(&mut b, member(B, Role::Node), "a");
    run(&mut a, &mut b);
    assert!(b.store.contains(&doc).unwrap());
    assert_eq!(json(&mut a.store, &note), json(&mut b.store, &note));
}

#[test]
fn a_node_cannot_plant_a_record_in_another_units_name() {
    // B writes a record that claims to be A's, addressed to B itself, and offers it to
    // their relay and to A: neither keeps it.
    let mut b = side("b", member(B, Role::Node), "r");
    let forged = create(&mut b.store, &header(A, &[A, B]), "giả mạo");
    b.session.send_foreign_records();
    let mut r = side("r", member(CLUSTER, Role::Relay), "b");
    run(&mut b, &mut r);
    assert!(!r.store.contains(&forged).unwrap());
    assert!(r.session.stats().changes_refused > 0);

    restart_session(&mut b, member(B, Role::Node), "a");
    b.session.send_foreign_records();
    let mut a = side("a", member(A, Role::Node), "b");
    run(&mut b, &mut a);
    assert!(!a.store.contains(&forged).unwrap());
    assert_eq!(a.store.count().unwrap(), 0);
    assert!(a.session.stats().changes_refused > 0);
}

#[test]
fn a_node_does_not_pass_on_another_units_record_to_a_peer_that_lacks_it() {
    // B holds A's record; C, a commune that may see it but does not hold it, would refuse
    // it from B: B sends none of it, and counts nothing as owed.
    let mut a = side("a", member(A, Role::Node), "b");
    let mut b = side("b", member(B, Role::Node), "a");
    let id = create(&mut a.store, &header(A, &[A, B, "18409"]), "cho ba xã");
    run(&mut a, &mut b);
    restart_session(&mut b, member(B, Role::Node), "c");
    let mut c = side("c", member("18409", Role::Node), "b");
    let messages_before = b.session.stats().messages_out;
    run(&mut b, &mut c);
    assert!(!c.store.contains(&id).unwrap());
    assert_eq!(c.session.stats().changes_refused, 0);
    assert!(b.session.is_idle() && c.session.is_idle());
    assert!(b.session.stats().messages_out - messages_before < 6);
}

#[test]
fn peers_that_meet_for_the_first_time_send_only_what_differs() {
    // A's 400 records reach B through their cluster relay; later A and B meet on the
    // LAN for the first time, neither with a cursor for the other, after A changed three.
    let mut a = side("a", member(A, Role::Node), "r");
    let mut r = side("r", member(CLUSTER, Role::Relay), "a");
    let ids: Vec<DocId> = (0..400)
        .map(|i| create(&mut a.store, &header(A, &[A, B]), &format!("văn bản {i}")))
        .collect();
    run(&mut a, &mut r);
    restart_session(&mut r, member(CLUSTER, Role::Relay), "b");
    let mut b = side("b", member(B, Role::Node), "r");
    run(&mut r, &mut b);
    assert_eq!(b.store.count().unwrap(), 400);
    for id in &ids[..3] {
        a.store
            .modify(id, |d| model::splice_body(d, 0, 0, "sửa "))
            .unwrap();
    }

    restart_session(&mut a, member(A, Role::Node), "b");
    restart_session(&mut b, member(B, Role::Node), "a");
    let crossed = run(&mut a, &mut b);
    for id in &ids {
        assert_eq!(json(&mut a.store, id), json(&mut b.store, id));
    }
    // Offering all 400 takes at least 800 messages; the catalogs settle in a handful of
    // round trips, and three records change hands.
    assert!(crossed < 60, "{crossed} messages for three changed records");
    assert!(a.session.is_idle() && b.session.is_idle());
}

#[test]
fn a_catalog_never_hides_a_record_that_differs() {
    // B holds an older version of A's record and lacks another; A's store is re-created
    // with the same records (a new epoch), so A reconciles instead of scanning B's cursor.
    let mut a = side("a", member(A, Role::Node), "b");
    let mut b = side("b", member(B, Role::Node), "a");
    let kept = create(&mut a.store, &header(A, &[B]), "giữ nguyên");
    let edited = create(&mut a.store, &header(A, &[B]), "sẽ sửa");
    run(&mut a, &mut b);
    disconnect(&mut a, &mut b);
    a.store
        .modify(&edited, |d| model::splice_body(d, 0, 0, "đã sửa "))
        .unwrap();
    let new = create(&mut a.store, &header(A, &[B]), "mới");
    let mut fresh = Store::in_memory(A).unwrap();
    for id in [&kept, &edited, &new] {
        let doc = a.store.get(id).unwrap().unwrap().clone();
        fresh.put(id, doc, &[]).unwrap();
    }
    a.store = fresh;
    restart_session(&mut a, member(A, Role::Node), "b");
    restart_session(&mut b, member(B, Role::Node), "a");
    run(&mut a, &mut b);
    for id in [&kept, &edited, &new] {
        assert_eq!(json(&mut a.store, id), json(&mut b.store, id));
    }
    assert!(a.session.is_idle() && b.session.is_idle());
}

#[test]
fn a_configured_peer_cannot_pass_itself_off_as_a_relay() {
    let mut a = side("a", member(A, Role::Node), "b");
    a.session.expect_role(Role::Node);
    let mut b = side("b", member(B, Role::Relay), "a");
    b.inbox.extend(a.session.start(&a.store).unwrap());
    let hello = b.session.start(&b.store).unwrap().remove(0);
    let r = a.store.batch(|s| a.session.handle(s, hello));
    assert!(matches!(r, Err(ProtocolError::WrongRole { .. })), "{r:?}");
}

/// A document of A's, shared with B and the province, taken through its lifecycle on A's
/// registrar up to `until` (the last action taken).
fn signed_document(store: &mut Store, until: &str) -> DocId {
    use crate::lifecycle::{ActionRequest, Context};
    use crate::users::{Directory, UserRole};
    let mut users = Directory::in_memory().unwrap();
    users
        .add(
            "chutich",
            UserRole::Leader,
            "Nguyễn Văn An",
            "Chủ tịch",
            "mật khẩu 1",
        )
        .unwrap();
    users
        .add(
            "vanthu",
            UserRole::Clerk,
            "Lê Thị Cúc",
            "Văn thư",
            "mật khẩu 2",
        )
        .unwrap();
    let leader = users.login("chutich", "mật khẩu 1").unwrap().1;
    let clerk = users.login("vanthu", "mật khẩu 2").unwrap().1;
    let id = create(store, &header(A, &[A, B]), "văn bản đã ký");
    let unit = UnitCode::parse(A).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let steps: &[(&str, &crate::users::Actor, Option<Vec<String>>)] = &[
        ("submit", &leader, None),
        ("approve", &leader, None),
        ("sign", &leader, None),
        ("number", &clerk, None),
        ("org_sign", &clerk, None),
        ("register", &clerk, None),
        ("dispatch", &clerk, Some(vec!["42".to_string()])),
    ];
    for (action, who, to) in steps {
        let mut doc = store.take(&id).unwrap().unwrap();
        let before = doc.get_heads();
        let ctx = Context {
            actor: who,
            node: "a",
            unit: &unit,
            unit_name: "Xã Thạch Hà",
            registrar: true,
            org_key: &key,
        };
        let request = ActionRequest {
            action: action.to_string(),
            to: to.clone(),
            ..Default::default()
        };
        crate::lifecycle::apply(&mut doc, &id, &request, &ctx, &*store).unwrap();
        store.put(&id, doc, &before).unwrap();
        if *action == until {
            break;
        }
    }
    id
}

#[test]
fn a_signature_altered_or_removed_or_a_step_taken_by_another_unit_is_refused_and_the_session_goes_on()
 {
    use automerge::transaction::Transactable;
    use automerge::{ObjType, ROOT, ReadDoc, Value};
    let mut a = side("a", member(A, Role::Node), "b");
    let mut b = side("b", member(B, Role::Node), "a");
    let doc = signed_document(&mut a.store, "sign");
    run(&mut a, &mut b);
    let before = json(&mut a.store, &doc);
    assert_eq!(json(&mut b.store, &doc), before);

    type Forgery = fn(&mut automerge::Automerge) -> Result<(), model::ModelError>;
    let forgeries: [(&str, Forgery); 4] = [
        ("renames the signer", |d| {
            let list = match d.get(ROOT, "signatures")? {
                Some((Value::Object(ObjType::List), l)) => l,
                _ => unreachable!("signed"),
            };
            let entry = match d.get(&list, 0)? {
                Some((Value::Object(ObjType::Map), m)) => m,
                _ => unreachable!("one signature"),
            };
            let mut tx = d.transaction();
            tx.put(&entry, "name", "Kẻ mạo danh")?;
            tx.commit();
            Ok(())
        }),
        ("removes the signature", |d| {
            let mut tx = d.transaction();
            tx.delete(ROOT, "signatures")?;
            tx.commit();
            Ok(())
        }),
        // A node of another unit that may see the document steps it on itself.
        ("recalls it from another unit", |d| {
            let mut tx = d.transaction();
            tx.put(ROOT, "state", "recalled")?;
            tx.commit();
            Ok(())
        }),
        ("asks for a number from another unit", |d| {
            let mut tx = d.transaction();
            let r = tx.put_object(ROOT, "number_request", ObjType::Map)?;
            tx.put(&r, "series", "outgoing")?;
            tx.put(ROOT, "state", "awaiting_number")?;
            tx.commit();
            Ok(())
        }),
    ];
    for (what, forge) in forgeries {
        let mut forger = side("b", member(B, Role::Node), "a");
        restart_session(&mut a, member(A, Role::Node), "b");
        run(&mut a, &mut forger);
        forger.store.modify(&doc, forge).unwrap();
        let fresh = create(&mut forger.store, &header(B, &[A, B]), what);
        restart_session(&mut a, member(A, Role::Node), "b");
        restart_session(&mut forger, member(B, Role::Node), "a");
        run(&mut a, &mut forger);
        assert_eq!(json(&mut a.store, &doc), before, "a forgery that {what}");
        assert!(a.session.stats().changes_refused >= 1, "{what}");
        // The session carried on: B's honest record arrived.
        assert!(a.store.contains(&fresh).unwrap(), "{what}");
        let checks = crate::signature::verify_all(&doc, a.store.get(&doc).unwrap().unwrap());
        assert!(checks.unwrap()[0].valid);
    }
}

#[test]
fn a_receipt_from_a_unit_the_document_was_not_sent_to_is_refused() {
    let mut a = side("a", member(A, Role::Node), "b");
    let mut b = side("b", member(B, Role::Node), "a");
    let doc = signed_document(&mut a.store, "dispatch");
    run(&mut a, &mut b);
    // B sees the document (it is in the audience) but it was dispatched to the province
    // only; B forges the receipt a recipient would write.
    let source = b.store.get(&doc).unwrap().unwrap().clone();
    let forged_id = crate::lifecycle::incoming_id(&doc, B);
    let forged = crate::lifecycle::create_incoming(&doc, &source, B, "b").unwrap();
    b.store.put(&forged_id, forged, &[]).unwrap();
    restart_session(&mut a, member(A, Role::Node), "b");
    restart_session(&mut b, member(B, Role::Node), "a");
    run(&mut a, &mut b);
    assert!(!a.store.contains(&forged_id).unwrap());
    assert!(a.store.incoming_of(&doc).unwrap().is_empty());
    assert!(a.session.stats().changes_refused >= 1);
}

#[test]
fn the_owners_later_steps_reach_a_second_node_of_a_recipient_unit_through_the_first() {
    use automerge::transaction::Transactable;
    // A dispatched document of A, shared with B, held by B's office server and B's laptop;
    // later the laptop meets only the server.
    let mut a = side("a", member(A, Role::Node), "b1");
    let mut b1 = side("b1", member(B, Role::Node), "a");
    let doc = signed_document(&mut a.store, "dispatch");
    run(&mut a, &mut b1);
    let mut b2 = side("b2", member(B, Role::Node), "a");
    restart_session(&mut a, member(A, Role::Node), "b2");
    run(&mut a, &mut b2);
    assert!(b2.store.contains(&doc).unwrap());

    // A files it (a step only A's offices take); it reaches B's server from A, and the
    // laptop from the server.
    a.store
        .modify(&doc, |d| {
            let mut tx = d.transaction();
            tx.put(automerge::ROOT, "state", "filed")?;
            tx.commit();
            Ok(())
        })
        .unwrap();
    restart_session(&mut a, member(A, Role::Node), "b1");
    restart_session(&mut b1, member(B, Role::Node), "a");
    run(&mut a, &mut b1);
    restart_session(&mut b1, member(B, Role::Node), "b2");
    restart_session(&mut b2, member(B, Role::Node), "b1");
    run(&mut b1, &mut b2);
    assert_eq!(json(&mut b2.store, &doc)["state"], "filed");
    assert_eq!(b2.session.stats().changes_refused, 0);
    assert_eq!(json(&mut b2.store, &doc), json(&mut a.store, &doc));
}
