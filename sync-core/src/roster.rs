//! Rosters: which node ids take part in sync, with which unit and role.
//!
//! A node or relay merges two sources:
//!
//! - **Signed rosters.** A relay trusted for it (the province relay, as a rule) lists the
//!   nodes and relays of its subtree, signs the list with its key and publishes it
//!   (`cabinet-relay roster publish`). Sync sessions carry it down the tree: every peer
//!   whose unit lies below the issuer receives each newer version, checks the signature
//!   against the keys it trusts (`--roster-key`), keeps it in its store and passes it on.
//!   So a cluster relay admits a new commune node, and every hop refuses a revoked one,
//!   as soon as the new version reaches it, with no file edited on any machine but the
//!   issuer's.
//! - **A roster file** (TOML, `--roster`), read at start: the contract's format, with an
//!   optional `revoked = ["<node id>", …]` list.
//!
//! A node id revoked by either source is refused whatever else lists it; otherwise a
//! signed roster's entry wins over the file's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use iroh::{EndpointId, SecretKey, Signature};
use serde::{Deserialize, Serialize};

use crate::policy::{Member, Role};
use crate::protocol::{RosterOffer, RosterVersion};
use crate::units::UnitCode;

/// Signed bytes start with this, so a roster signature can never be taken for a
/// signature over anything else the key signs.
const SIGNING_CONTEXT: &[u8] = b"cabinet/roster/1\0";

/// The most entries a signed roster may list (a province has a few hundred communes).
pub const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum RosterError {
    #[error("cannot read roster {path}: {reason}")]
    Read {
        path: String,
        reason: std::io::Error,
    },
    #[error("roster {path} is not valid: {message}")]
    Invalid { path: String, message: String },
    #[error("the signed roster does not decode: {0}")]
    Malformed(String),
    #[error("the roster is signed by {0}, which is not a key this node trusts for rosters")]
    UntrustedIssuer(String),
    #[error("the roster's signature does not verify")]
    BadSignature,
    #[error("a roster entry is not valid: {0}")]
    BadEntry(String),
    #[error("unit {unit} lies outside {issuer}, the subtree of the roster's issuer")]
    OutsideSubtree { unit: String, issuer: String },
    #[error("the roster lists {0} entries, more than the {MAX_ENTRIES} allowed")]
    TooLarge(usize),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterFile {
    #[serde(default)]
    member: Vec<RosterEntry>,
    #[serde(default)]
    revoked: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterEntry {
    id: String,
    unit: String,
    role: Role,
}

/// Node ids with their unit and role, and the node ids refused whatever else lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    members: HashMap<String, Member>,
    revoked: HashSet<String>,
}

fn parse_id(id: &str) -> Result<String, String> {
    id.parse::<EndpointId>()
        .map(|k| k.to_string())
        .map_err(|_| format!("{id:?} is not a node id"))
}

impl Roster {
    pub fn load(path: &Path) -> Result<Roster, RosterError> {
        let text = std::fs::read_to_string(path).map_err(|reason| RosterError::Read {
            path: path.display().to_string(),
            reason,
        })?;
        Roster::parse(&text).map_err(|message| RosterError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Roster, String> {
        let file: RosterFile = toml::from_str(text).map_err(|e| e.to_string())?;
        Roster::from_entries(file.member, file.revoked)
    }

    fn from_entries(entries: Vec<RosterEntry>, revoked: Vec<String>) -> Result<Roster, String> {
        let mut roster = Roster::default();
        for entry in entries {
            let id = parse_id(&entry.id)?;
            let unit = UnitCode::parse(&entry.unit).map_err(|e| e.to_string())?;
            if roster.members.contains_key(&id) {
                return Err(format!("node {id} is listed twice"));
            }
            roster.members.insert(
                id,
                Member {
                    unit,
                    role: entry.role,
                },
            );
        }
        for id in revoked {
            roster.revoked.insert(parse_id(&id)?);
        }
        Ok(roster)
    }

    pub fn get(&self, id: &str) -> Option<&Member> {
        self.members.get(id)
    }

    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked.contains(id)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// How many node ids the roster revokes.
    pub fn revoked_len(&self) -> usize {
        self.revoked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn entries(&self) -> Vec<RosterEntry> {
        let mut entries: Vec<RosterEntry> = self
            .members
            .iter()
            .map(|(id, m)| RosterEntry {
                id: id.clone(),
                unit: m.unit.to_string(),
                role: m.role,
            })
            .collect();
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        entries
    }
}

#[derive(Serialize, Deserialize)]
struct Body {
    unit: String,
    version: u64,
    issued_at: String,
    members: Vec<RosterEntry>,
    revoked: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    issuer: String,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    [SIGNING_CONTEXT, body].concat()
}

/// A roster as its issuer signed it, checked.
#[derive(Debug, Clone)]
pub struct SignedRoster {
    pub issuer: EndpointId,
    /// The issuer's unit: every entry lies in its subtree.
    pub unit: UnitCode,
    /// Grows with each roster the issuer publishes; a peer keeps only the newest.
    pub version: u64,
    pub issued_at: String,
    pub roster: Roster,
    /// The bytes that travel and are kept.
    pub bytes: Vec<u8>,
}

fn check_subtree(roster: &Roster, unit: &UnitCode) -> Result<(), RosterError> {
    if roster.members.len() + roster.revoked.len() > MAX_ENTRIES {
        return Err(RosterError::TooLarge(
            roster.members.len() + roster.revoked.len(),
        ));
    }
    for member in roster.members.values() {
        if !member.unit.path_to_root().contains(unit) {
            return Err(RosterError::OutsideSubtree {
                unit: member.unit.to_string(),
                issuer: unit.to_string(),
            });
        }
    }
    Ok(())
}

impl SignedRoster {
    /// Signs `roster` as the roster of `unit`'s subtree, version `version`.
    pub fn sign(
        key: &SecretKey,
        unit: &UnitCode,
        version: u64,
        roster: &Roster,
    ) -> Result<SignedRoster, RosterError> {
        check_subtree(roster, unit)?;
        let mut revoked: Vec<String> = roster.revoked.iter().cloned().collect();
        revoked.sort();
        let issued_at = crate::model::now_vietnam();
        let body = Body {
            unit: unit.to_string(),
            version,
            issued_at: issued_at.clone(),
            members: roster.entries(),
            revoked,
        };
        let body = postcard::to_stdvec(&body).expect("a roster always serialises");
        let signature = key.sign(&signed_message(&body));
        let envelope = Envelope {
            issuer: key.public().to_string(),
            body,
            signature: signature.to_bytes().to_vec(),
        };
        Ok(SignedRoster {
            issuer: key.public(),
            unit: unit.clone(),
            version,
            issued_at,
            roster: roster.clone(),
            bytes: postcard::to_stdvec(&envelope).expect("an envelope always serialises"),
        })
    }

    /// The issuer and version a signed roster claims, unchecked: enough to skip one that
    /// is not newer than the roster held without verifying it.
    pub fn peek(bytes: &[u8]) -> Option<(String, u64)> {
        let envelope: Envelope = postcard::from_bytes(bytes).ok()?;
        let body: Body = postcard::from_bytes(&envelope.body).ok()?;
        Some((envelope.issuer, body.version))
    }

    /// Checks a signed roster: its issuer is one of `trusted`, the signature verifies,
    /// every entry names a known unit in the issuer's subtree.
    pub fn verify(bytes: &[u8], trusted: &[EndpointId]) -> Result<SignedRoster, RosterError> {
        let malformed = |e: &dyn std::fmt::Display| RosterError::Malformed(e.to_string());
        let envelope: Envelope = postcard::from_bytes(bytes).map_err(|e| malformed(&e))?;
        let issuer: EndpointId = envelope
            .issuer
            .parse()
            .map_err(|_| RosterError::Malformed("the issuer is not a node id".into()))?;
        if !trusted.contains(&issuer) {
            return Err(RosterError::UntrustedIssuer(issuer.to_string()));
        }
        let signature: [u8; Signature::LENGTH] = envelope
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| RosterError::BadSignature)?;
        issuer
            .verify(
                &signed_message(&envelope.body),
                &Signature::from_bytes(&signature),
            )
            .map_err(|_| RosterError::BadSignature)?;
        let body: Body = postcard::from_bytes(&envelope.body).map_err(|e| malformed(&e))?;
        let unit = UnitCode::parse(&body.unit).map_err(|e| malformed(&e))?;
        if body.members.len() + body.revoked.len() > MAX_ENTRIES {
            return Err(RosterError::TooLarge(
                body.members.len() + body.revoked.len(),
            ));
        }
        let roster =
            Roster::from_entries(body.members, body.revoked).map_err(RosterError::BadEntry)?;
        check_subtree(&roster, &unit)?;
        Ok(SignedRoster {
            issuer,
            unit,
            version: body.version,
            issued_at: body.issued_at,
            roster,
            bytes: bytes.to_vec(),
        })
    }
}

/// What a node or relay knows of who may take part: the keys it trusts to sign rosters,
/// the newest signed roster of each, and its roster file.
#[derive(Debug, Clone)]
pub struct Trust {
    anchors: Vec<EndpointId>,
    file: Roster,
    signed: BTreeMap<String, SignedRoster>,
}

impl Trust {
    pub fn new(anchors: Vec<EndpointId>, file: Roster) -> Trust {
        Trust {
            anchors,
            file,
            signed: BTreeMap::new(),
        }
    }

    /// Takes a signed roster if it verifies and is newer than the one held from its
    /// issuer; returns it when it was taken.
    pub fn accept(&mut self, bytes: &[u8]) -> Result<Option<&SignedRoster>, RosterError> {
        // A roster that is not newer than the one held is not worth a signature check.
        if let Some((issuer, version)) = SignedRoster::peek(bytes)
            && self
                .signed
                .get(&issuer)
                .is_some_and(|held| version <= held.version)
        {
            return Ok(None);
        }
        let roster = SignedRoster::verify(bytes, &self.anchors)?;
        let issuer = roster.issuer.to_string();
        let newer = self
            .signed
            .get(&issuer)
            .is_none_or(|held| roster.version > held.version);
        if !newer {
            return Ok(None);
        }
        self.signed.insert(issuer.clone(), roster);
        Ok(self.signed.get(&issuer))
    }

    /// The unit and role of a node id, or `None` if it is unknown or revoked.
    pub fn member(&self, id: &str) -> Option<Member> {
        if self.is_revoked(id) {
            return None;
        }
        self.signed
            .values()
            .find_map(|s| s.roster.get(id))
            .or_else(|| self.file.get(id))
            .cloned()
    }

    /// Revoked by the roster file, or by a signed roster whose issuer the node belongs
    /// under: an issuer revokes only in its own subtree, so a province cannot revoke a
    /// relay or node that a roster lists under another branch. A node no roster lists
    /// (a peer the operator configured) has no known place in the tree: any trusted
    /// issuer's revocation applies to it.
    pub fn is_revoked(&self, id: &str) -> bool {
        if self.file.is_revoked(id) {
            return true;
        }
        let listed = self
            .file
            .get(id)
            .into_iter()
            .chain(self.signed.values().filter_map(|s| s.roster.get(id)));
        let units: Vec<UnitCode> = listed.map(|m| m.unit.clone()).collect();
        self.signed.values().any(|s| {
            s.roster.is_revoked(id) && units.iter().all(|u| u.path_to_root().contains(&s.unit))
        })
    }

    /// The signed rosters held, newest version of each issuer.
    pub fn signed(&self) -> impl Iterator<Item = &SignedRoster> {
        self.signed.values()
    }

    /// The signed rosters held, as a session offers them to its peer.
    pub fn offers(&self) -> Vec<RosterOffer> {
        self.signed
            .values()
            .map(|s| RosterOffer {
                version: RosterVersion {
                    issuer: s.issuer.to_string(),
                    version: s.version,
                },
                unit: s.unit.clone(),
                signed: s.bytes.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::generate()
    }

    fn roster(entries: &[(&SecretKey, &str, Role)], revoked: &[&SecretKey]) -> Roster {
        let mut text = String::new();
        if !revoked.is_empty() {
            let ids: Vec<String> = revoked
                .iter()
                .map(|k| format!("\"{}\"", k.public()))
                .collect();
            text.push_str(&format!("revoked = [{}]\n", ids.join(", ")));
        }
        for (k, unit, role) in entries {
            text.push_str(&format!(
                "[[member]]\nid = \"{}\"\nunit = \"{unit}\"\nrole = \"{}\"\n",
                k.public(),
                role.as_str()
            ));
        }
        Roster::parse(&text).unwrap()
    }

    #[test]
    fn roster_files_reject_unknown_units_and_bad_ids() {
        let id = key().public().to_string();
        let ok = format!("[[member]]\nid = \"{id}\"\nunit = \"18562\"\nrole = \"node\"\n");
        let r = Roster::parse(&ok).unwrap();
        assert_eq!(r.get(&id).unwrap().role, Role::Node);
        assert!(Roster::parse(&ok.replace("18562", "99999")).is_err());
        assert!(Roster::parse(&ok.replace(&id, "nope")).is_err());
        assert!(Roster::parse(&ok.replace("node", "king")).is_err());
        assert!(Roster::parse(&format!("revoked = [\"nope\"]\n{ok}")).is_err());
        assert!(
            Roster::parse(&format!(
                "{ok}\n[[member]]\nid = \"{id}\"\nunit = \"18568\"\nrole = \"node\"\n"
            ))
            .is_err()
        );
    }

    #[test]
    fn a_signed_roster_verifies_only_against_its_issuers_key_and_untouched() {
        let province = key();
        let commune = key();
        let r = roster(&[(&commune, "18562", Role::Node)], &[]);
        let unit = UnitCode::parse("42").unwrap();
        let signed = SignedRoster::sign(&province, &unit, 3, &r).unwrap();
        let ok = SignedRoster::verify(&signed.bytes, &[province.public()]).unwrap();
        assert_eq!(ok.version, 3);
        assert_eq!(ok.roster, r);

        assert!(matches!(
            SignedRoster::verify(&signed.bytes, &[key().public()]),
            Err(RosterError::UntrustedIssuer(_))
        ));
        // Any bit changed anywhere: refused.
        for i in 0..signed.bytes.len() {
            let mut bytes = signed.bytes.clone();
            bytes[i] ^= 0x01;
            assert!(
                SignedRoster::verify(&bytes, &[province.public()]).is_err(),
                "a roster with byte {i} changed was taken"
            );
        }
        assert!(SignedRoster::verify(b"", &[province.public()]).is_err());
    }

    #[test]
    fn an_issuer_revokes_only_in_its_own_subtree() {
        let national = key();
        let province = key();
        let other_province_node = key();
        let vn = UnitCode::parse("VN").unwrap();
        let ha_tinh = UnitCode::parse("42").unwrap();
        let top = SignedRoster::sign(
            &national,
            &vn,
            1,
            &roster(
                &[
                    (&province, "42", Role::Relay),
                    (&other_province_node, "00004", Role::Node),
                ],
                &[],
            ),
        )
        .unwrap();
        // Hà Tĩnh's relay tries to revoke the national list's node of another province.
        let below = SignedRoster::sign(
            &province,
            &ha_tinh,
            1,
            &roster(&[], &[&other_province_node]),
        )
        .unwrap();
        let mut trust = Trust::new(
            vec![national.public(), province.public()],
            Roster::default(),
        );
        trust.accept(&top.bytes).unwrap();
        trust.accept(&below.bytes).unwrap();
        let id = other_province_node.public().to_string();
        assert!(!trust.is_revoked(&id));
        assert!(trust.member(&id).is_some());
    }

    #[test]
    fn an_issuer_lists_only_its_own_subtree() {
        let cluster = key();
        let r = roster(&[(&key(), "18409", Role::Node)], &[]);
        // Lộc Hà's cluster 42-445 may list Hồng Lộc (18409, also in 42-445) ...
        let unit = UnitCode::parse("42-445").unwrap();
        assert!(SignedRoster::sign(&cluster, &unit, 1, &r).is_ok());
        // ... but not a commune of another province.
        let elsewhere = roster(&[(&key(), "00004", Role::Node)], &[]);
        assert!(matches!(
            SignedRoster::sign(&cluster, &unit, 1, &elsewhere),
            Err(RosterError::OutsideSubtree { .. })
        ));
    }

    #[test]
    fn newer_versions_replace_older_and_revocation_wins() {
        let province = key();
        let a = key();
        let b = key();
        let unit = UnitCode::parse("42").unwrap();
        let v1 = SignedRoster::sign(
            &province,
            &unit,
            1,
            &roster(&[(&a, "18562", Role::Node), (&b, "18568", Role::Node)], &[]),
        )
        .unwrap();
        let v2 = SignedRoster::sign(
            &province,
            &unit,
            2,
            &roster(&[(&a, "18562", Role::Node)], &[&b]),
        )
        .unwrap();
        // B is also in the operator's own file: the revocation still wins.
        let file = roster(&[(&b, "18568", Role::Node)], &[]);
        let mut trust = Trust::new(vec![province.public()], file);
        assert!(trust.accept(&v1.bytes).unwrap().is_some());
        assert!(trust.member(&b.public().to_string()).is_some());
        assert!(trust.accept(&v2.bytes).unwrap().is_some());
        assert!(trust.member(&b.public().to_string()).is_none());
        assert!(trust.is_revoked(&b.public().to_string()));
        // An older version arriving late changes nothing.
        assert!(trust.accept(&v1.bytes).unwrap().is_none());
        assert!(trust.member(&b.public().to_string()).is_none());
        assert_eq!(
            trust.member(&a.public().to_string()).unwrap().unit.as_str(),
            "18562"
        );
    }
}
