//! Who may hold, receive and write which record: one policy, checked on every send and
//! every receive.
//!
//! A record lives on the nodes of the units in its audience and on the relays that lie on
//! the tree paths between those units, which carry it; nowhere else. A secret document
//! (độ mật) or a private annotation never leaves the nodes of its own unit. A cluster id
//! or province code in an audience means that authority itself (its relay and its own
//! nodes), not every commune below it.
//!
//! Which unit and role a peer has comes from the roster (see `roster`).

use serde::{Deserialize, Serialize};

use crate::model::Header;
use crate::units::UnitCode;

/// What a participant in sync is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A commune (or province office) node: holds the records of its own unit's audience.
    Node,
    /// A store-and-forward relay: carries records between the units below and above it.
    Relay,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Relay => "relay",
        }
    }
}

/// A participant whose unit and role are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub unit: UnitCode,
    pub role: Role,
}

/// Could a participant of this unit and role hold the record with this header?
pub fn may_hold(member: &Member, header: &Header) -> bool {
    if header.confidential {
        return member.role == Role::Node && member.unit.as_str() == header.unit;
    }
    let mut units: Vec<UnitCode> = header
        .audience
        .iter()
        .filter_map(|u| UnitCode::parse(u).ok())
        .collect();
    if let Ok(owner) = UnitCode::parse(&header.unit) {
        units.push(owner);
    }
    units.sort();
    units.dedup();
    if units.contains(&member.unit) {
        return true;
    }
    member.role == Role::Relay && on_tree_between(&member.unit, &units)
}

/// Does `relay` lie on a tree path between two of `units` (the smallest subtree that
/// connects them)?
fn on_tree_between(relay: &UnitCode, units: &[UnitCode]) -> bool {
    // For each unit below the relay, the child of the relay its path passes through.
    let mut children_used = Vec::new();
    let mut below = 0;
    for unit in units {
        let path = unit.path_to_root();
        if let Some(pos) = path.iter().position(|u| u == relay) {
            below += 1;
            if pos > 0 && !children_used.contains(&path[pos - 1]) {
                children_used.push(path[pos - 1].clone());
            }
        }
    }
    // Some units below and some elsewhere: every path between them crosses the relay.
    // All below: the relay is on the tree only if it joins two of its branches.
    (below > 0 && below < units.len()) || children_used.len() >= 2
}

/// Why a peer's change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the peer may not hold this record")]
    PeerMayNotHold,
    #[error("this store may not hold this record")]
    WeMayNotHold,
    #[error("the change moves the record to another owning unit")]
    OwnerChanged,
    #[error("the change alters who created the record")]
    CreatorChanged,
    #[error("only the owning unit changes who may see a record (its audience or secrecy)")]
    NotOwner,
    #[error("a node creates records only for its own unit")]
    ForeignCreator,
}

/// `may_accept`: may `peer` write this change, which turns `before` (if we hold the
/// record) into `after`? A peer writes only into records it may hold both before and
/// after, never moves a record to another unit, never creates one in a unit it does not
/// belong to, and never hands us a record we may not hold ourselves.
pub fn may_accept(
    me: &Member,
    peer: &Member,
    before: Option<&Header>,
    after: &Header,
) -> Result<(), Refusal> {
    if !may_hold(me, after) {
        return Err(Refusal::WeMayNotHold);
    }
    if !may_hold(peer, after) {
        return Err(Refusal::PeerMayNotHold);
    }
    let Some(before) = before else {
        // A new record: a node speaks only for its own unit; a relay carries records
        // its subtree created.
        if peer.role == Role::Node && peer.unit.as_str() != after.unit {
            return Err(Refusal::ForeignCreator);
        }
        return Ok(());
    };
    if !may_hold(peer, before) {
        return Err(Refusal::PeerMayNotHold);
    }
    if before.unit != after.unit {
        return Err(Refusal::OwnerChanged);
    }
    if before.created_by != after.created_by || before.created_at != after.created_at {
        return Err(Refusal::CreatorChanged);
    }
    // A node of another unit may edit a record shared with it, not widen, narrow or
    // lift the secrecy of it. A relay carries such changes from their owners.
    // TODO: a relay is trusted to carry only owners' changes; knowing who made a change
    // needs changes signed by their unit, which the roster's keys do not provide yet.
    let reaudienced =
        before.audience != after.audience || before.confidential != after.confidential;
    if reaudienced && peer.role == Role::Node && peer.unit.as_str() != before.unit {
        return Err(Refusal::NotOwner);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;

    fn member(unit: &str, role: Role) -> Member {
        Member {
            unit: UnitCode::parse(unit).unwrap(),
            role,
        }
    }

    fn header(unit: &str, audience: &[&str]) -> Header {
        Header {
            kind: Kind::Document,
            unit: unit.into(),
            audience: audience.iter().map(|s| s.to_string()).collect(),
            created_by: "x".into(),
            created_at: "t".into(),
            confidential: false,
        }
    }

    // Hà Tĩnh (42): Thạch Hà 18562 and Lộc Hà 18568 in cluster 42-445;
    // 18409 Hồng Lộc also in 42-445.
    #[test]
    fn a_record_shared_between_two_communes_of_a_cluster_stays_in_the_cluster() {
        let h = header("18562", &["18562", "18568"]);
        assert!(may_hold(&member("18562", Role::Node), &h));
        assert!(may_hold(&member("18568", Role::Node), &h));
        assert!(!may_hold(&member("18409", Role::Node), &h));
        assert!(may_hold(&member("42-445", Role::Relay), &h));
        assert!(!may_hold(&member("42", Role::Relay), &h));
        assert!(!may_hold(&member("VN", Role::Relay), &h));
    }

    #[test]
    fn a_record_for_the_province_climbs_through_cluster_and_province_relays() {
        let h = header("18562", &["42"]);
        assert!(may_hold(&member("42-445", Role::Relay), &h));
        assert!(may_hold(&member("42", Role::Relay), &h));
        assert!(may_hold(&member("42", Role::Node), &h));
        assert!(!may_hold(&member("18568", Role::Node), &h));
        assert!(!may_hold(&member("VN", Role::Relay), &h));
    }

    #[test]
    fn a_commune_only_record_never_leaves_its_nodes() {
        let h = header("18562", &[]);
        assert!(may_hold(&member("18562", Role::Node), &h));
        assert!(!may_hold(&member("42-445", Role::Relay), &h));
    }

    #[test]
    fn secret_records_stay_on_their_units_nodes_whatever_the_audience() {
        let mut h = header("18562", &["42"]);
        h.confidential = true;
        assert!(may_hold(&member("18562", Role::Node), &h));
        assert!(!may_hold(&member("42-445", Role::Relay), &h));
        assert!(!may_hold(&member("42", Role::Node), &h));
    }

    #[test]
    fn peers_cannot_move_records_or_write_outside_their_audience() {
        let me = member("42-445", Role::Relay);
        let a = member("18562", Role::Node);
        let b = member("18568", Role::Node);
        let h = header("18562", &["18568"]);
        assert_eq!(may_accept(&me, &a, None, &h), Ok(()));
        assert_eq!(
            may_accept(&me, &member("18409", Role::Node), None, &h),
            Err(Refusal::PeerMayNotHold)
        );
        let moved = header("18568", &["18562"]);
        assert_eq!(
            may_accept(&me, &b, Some(&h), &moved),
            Err(Refusal::OwnerChanged)
        );
        // B may not share A's record further, nor make it secret; A may.
        let widened = header("18562", &["18568", "18409"]);
        assert_eq!(
            may_accept(&me, &b, Some(&h), &widened),
            Err(Refusal::NotOwner)
        );
        let mut secret = h.clone();
        secret.confidential = true;
        assert_eq!(
            may_accept(&me, &b, Some(&h), &secret),
            Err(Refusal::WeMayNotHold)
        );
        // B may not create a record in A's name, even one addressed to itself; a relay
        // carries A's records to B.
        assert_eq!(may_accept(&me, &b, None, &h), Err(Refusal::ForeignCreator));
        let b_as_me = member("18568", Role::Node);
        assert_eq!(
            may_accept(&b_as_me, &member("42-445", Role::Relay), None, &h),
            Ok(())
        );
        assert_eq!(
            may_accept(&b_as_me, &member("42-445", Role::Relay), Some(&h), &widened),
            Ok(())
        );
        assert_eq!(
            may_accept(&member("18409", Role::Node), &a, Some(&h), &widened),
            Ok(())
        );
    }
}
