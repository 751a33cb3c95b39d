//! Digital signatures (ký số) over document versions.
//!
//! A signature covers one version of a document: its automerge heads and a BLAKE3 hash
//! of the canonical content at those heads (the Decree 30 fields and the body, as JSON
//! with sorted keys; lifecycle state, history and signatures are not content). The
//! competent person signs before the document is numbered and dated (Decree 30, art.
//! 15 and Appendix I), so a personal signature's content leaves out the number and the
//! date of issue, which the register fills in afterwards; the organisation's signature,
//! applied after numbering, covers them. The
//! signed message also names the record and the kind of signature, so a signature can
//! be neither moved to another record nor passed off as another kind. Anyone holding
//! the document can check a signature offline with the public key it carries: whether
//! the key signed that version, and whether the current content is still that version.
//!
//! Signatures live in the document's `signatures` list; each entry is a map of strings.

use std::collections::BTreeMap;

use automerge::transaction::{Transactable, Transaction};
use automerge::{Automerge, ChangeHash, ObjType, ROOT, ReadDoc, Value};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::Serialize;
use serde_json::{Value as Json, json};

use crate::model::{self, At, DocId, ModelError};

/// Domain separation for signature messages.
const CONTEXT: &[u8] = b"cabinet/signature/1\0";

/// The fields that make up a document's content: its Decree 30 fields but its state.
fn content_fields() -> impl Iterator<Item = &'static str> {
    model::DOCUMENT_FIELDS
        .iter()
        .copied()
        .filter(|k| *k != "state")
}

/// Who signs: a person (the competent signer) or the organisation (applied by the clerk
/// after numbering, with the office node's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureKind {
    Personal,
    Organisation,
}

impl SignatureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureKind::Personal => "personal",
            SignatureKind::Organisation => "organisation",
        }
    }

    fn parse(s: &str) -> Option<SignatureKind> {
        match s {
            "personal" => Some(SignatureKind::Personal),
            "organisation" => Some(SignatureKind::Organisation),
            _ => None,
        }
    }
}

/// The one signing and what is printed for them.
pub struct Signer<'a> {
    pub kind: SignatureKind,
    /// A person's full name, or the organisation's name.
    pub name: &'a str,
    /// The position (such as "Chủ tịch"), empty for an organisation.
    pub title: &'a str,
    /// The user name, or the clerk who applied the organisation's signature.
    pub by: &'a str,
    pub key: &'a SigningKey,
}

/// The fields the register fills in after the competent person has signed.
const FILLED_BY_REGISTER: &[&str] = &["number", "issued_date"];

/// The canonical content of a document, as a signature of `kind` covers it: the
/// content fields (absent ones as null), the recipients and the body, by sorted key.
fn canonical_content(
    at: At<'_>,
    kind: SignatureKind,
) -> Result<BTreeMap<String, Json>, ModelError> {
    let mut out = BTreeMap::new();
    for key in content_fields() {
        if kind == SignatureKind::Personal && FILLED_BY_REGISTER.contains(&key) {
            continue;
        }
        out.insert(
            key.to_string(),
            json!(at.str(&ROOT, key).filter(|v| !v.is_empty())),
        );
    }
    out.insert(
        "recipients".into(),
        json!(at.str_list(&ROOT, "recipients").unwrap_or_default()),
    );
    // The files a document lists are part of what is signed (by hash, name, size and
    // type); a document without any signs as it did before attachments existed.
    let mut files: Vec<Json> = crate::model::attachments(at)
        .into_iter()
        .map(
            |a| json!({"hash": a.hash, "name": a.name, "size": a.size, "media_type": a.media_type}),
        )
        .collect();
    if !files.is_empty() {
        files.sort_by_key(|f| f.to_string());
        out.insert("attachments".into(), Json::Array(files));
    }
    let body = match at.get(&ROOT, "body".into()) {
        Some((Value::Object(ObjType::Text), t)) => at.text(&t),
        _ => None,
    }
    .ok_or(ModelError::BadHeader("document has no body"))?;
    out.insert("body".into(), json!(body));
    Ok(out)
}

fn hash_of(at: At<'_>, kind: SignatureKind) -> Result<String, ModelError> {
    // A map of strings, nulls and lists of strings: its JSON has one form.
    let content = serde_json::to_vec(&canonical_content(at, kind)?).expect("JSON values serialise");
    Ok(blake3::hash(&content).to_hex().to_string())
}

/// BLAKE3 of the canonical content of `doc` as it is now, hex.
pub fn content_hash(doc: &Automerge, kind: SignatureKind) -> Result<String, ModelError> {
    hash_of(At::now(doc), kind)
}

/// BLAKE3 of the canonical content at `heads`, if `doc`'s history holds them.
pub fn content_hash_at(
    doc: &Automerge,
    heads: &[ChangeHash],
    kind: SignatureKind,
) -> Result<String, ModelError> {
    if heads.iter().any(|h| doc.get_change_by_hash(h).is_none()) {
        return Err(ModelError::Invalid(
            "the signed version is not in this copy's history".into(),
        ));
    }
    hash_of(
        At {
            doc,
            heads: Some(heads),
        },
        kind,
    )
}

/// One stored signature.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: String,
    name: String,
    title: String,
    by: String,
    node: String,
    public_key: String,
    heads: Vec<String>,
    content_hash: String,
    signed_at: String,
    signature: String,
}

impl Entry {
    /// The bytes signed: the context, then the fields as JSON in a fixed order.
    fn message(&self, id: &str) -> Vec<u8> {
        #[derive(Serialize)]
        struct Signed<'a> {
            record: &'a str,
            kind: &'a str,
            name: &'a str,
            title: &'a str,
            by: &'a str,
            node: &'a str,
            public_key: &'a str,
            heads: &'a [String],
            content_hash: &'a str,
            signed_at: &'a str,
        }
        let mut out = CONTEXT.to_vec();
        serde_json::to_writer(
            &mut out,
            &Signed {
                record: id,
                kind: &self.kind,
                name: &self.name,
                title: &self.title,
                by: &self.by,
                node: &self.node,
                public_key: &self.public_key,
                heads: &self.heads,
                content_hash: &self.content_hash,
                signed_at: &self.signed_at,
            },
        )
        .expect("strings serialise");
        out
    }

    /// Does the Ed25519 signature hold for the fields as stored?
    fn check(&self, id: &str) -> Result<(), String> {
        let key: [u8; 32] = hex::decode(&self.public_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("the public key is not 32 bytes of hex")?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| "the public key is not valid")?;
        let sig: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("the signature is not 64 bytes of hex")?;
        if SignatureKind::parse(&self.kind).is_none() {
            return Err(format!("{:?} is not a kind of signature", self.kind));
        }
        key.verify_strict(&self.message(id), &Signature::from_bytes(&sig))
            .map_err(|_| "the signature does not match the signed fields".to_string())
    }

    fn heads(&self) -> Option<Vec<ChangeHash>> {
        self.heads.iter().map(|h| h.parse().ok()).collect()
    }
}

fn entries(doc: &Automerge) -> Vec<Entry> {
    entries_at(At::now(doc))
}

/// The signatures of a document as it is or was.
fn entries_at(at: At<'_>) -> Vec<Entry> {
    let Some((Value::Object(ObjType::List), list)) = at.get(&ROOT, "signatures".into()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for i in 0..at.length(&list) {
        let Some((Value::Object(ObjType::Map), m)) = at.get(&list, i.into()) else {
            continue;
        };
        let s = |k: &str| at.str(&m, k).unwrap_or_default();
        out.push(Entry {
            kind: s("kind"),
            name: s("name"),
            title: s("title"),
            by: s("by"),
            node: s("node"),
            public_key: s("public_key"),
            heads: at.str_list(&m, "heads").unwrap_or_default(),
            content_hash: s("content_hash"),
            signed_at: s("signed_at"),
            signature: s("signature"),
        });
    }
    out
}

/// Signs the document as it is now, within the transaction `tx` that also records the
/// lifecycle step. `doc` is the document before `tx` began (the version signed).
pub fn sign(
    tx: &mut Transaction<'_>,
    id: &DocId,
    doc_heads: &[ChangeHash],
    content_hash: String,
    signer: &Signer<'_>,
    node: &str,
) -> Result<(), ModelError> {
    let mut entry = Entry {
        kind: signer.kind.as_str().to_string(),
        name: signer.name.to_string(),
        title: signer.title.to_string(),
        by: signer.by.to_string(),
        node: node.to_string(),
        public_key: hex::encode(signer.key.verifying_key().to_bytes()),
        heads: model::heads_hex(doc_heads),
        content_hash,
        signed_at: model::now_vietnam(),
        signature: String::new(),
    };
    entry.signature = hex::encode(signer.key.sign(&entry.message(id.as_str())).to_bytes());
    let list = model::list_or_new(tx, "signatures")?;
    let at = tx.length(&list);
    let m = tx.insert_object(&list, at, ObjType::Map)?;
    for (k, v) in [
        ("kind", &entry.kind),
        ("name", &entry.name),
        ("title", &entry.title),
        ("by", &entry.by),
        ("node", &entry.node),
        ("public_key", &entry.public_key),
        ("content_hash", &entry.content_hash),
        ("signed_at", &entry.signed_at),
        ("signature", &entry.signature),
    ] {
        tx.put(&m, k, v.as_str())?;
    }
    model::put_str_list(tx, &m, "heads", &entry.heads)?;
    Ok(())
}

/// What a check of one signature found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub kind: String,
    pub name: String,
    pub title: String,
    pub by: String,
    pub node: String,
    pub public_key: String,
    pub signed_at: String,
    /// The version signed.
    pub heads: Vec<String>,
    pub content_hash: String,
    /// The key signed exactly this version: the signature matches its fields and the
    /// content at `heads` hashes to `content_hash`.
    pub valid: bool,
    /// The current content is still the signed version's (no edit since).
    pub covers_current: bool,
    /// Why the signature is not valid, or is not valid for the current content.
    pub problem: Option<String>,
}

/// Checks every signature of `doc` (the record `id`), offline.
pub fn verify_all(id: &DocId, doc: &Automerge) -> Result<Vec<Verification>, ModelError> {
    let current = [
        content_hash(doc, SignatureKind::Personal)?,
        content_hash(doc, SignatureKind::Organisation)?,
    ];
    Ok(entries(doc)
        .into_iter()
        .map(|e| {
            let kind = SignatureKind::parse(&e.kind);
            let signed = e.check(id.as_str()).and_then(|()| {
                let kind = kind.ok_or("not a kind of signature")?;
                let heads = e.heads().ok_or("the signed heads are not change hashes")?;
                let hash = content_hash_at(doc, &heads, kind).map_err(|err| err.to_string())?;
                if hash == e.content_hash {
                    Ok(())
                } else {
                    Err(
                        "the content at the signed version does not match the signed hash"
                            .to_string(),
                    )
                }
            });
            let valid = signed.is_ok();
            let covers_current = valid
                && match kind {
                    Some(SignatureKind::Personal) => current[0] == e.content_hash,
                    Some(SignatureKind::Organisation) => current[1] == e.content_hash,
                    None => false,
                };
            let problem = match signed {
                Err(p) => Some(p),
                Ok(()) if !covers_current => Some(
                    "the document was edited after signing: the signature holds for the \
                     signed version only"
                        .to_string(),
                ),
                Ok(()) => None,
            };
            Verification {
                kind: e.kind,
                name: e.name,
                title: e.title,
                by: e.by,
                node: e.node,
                public_key: e.public_key,
                signed_at: e.signed_at,
                heads: e.heads,
                content_hash: e.content_hash,
                valid,
                covers_current,
                problem,
            }
        })
        .collect())
}

/// How many signatures a document carries.
pub fn count(doc: &Automerge) -> usize {
    entries(doc).len()
}

/// The signatures as stored, without checking them (for listings).
pub fn summary(doc: &Automerge) -> Json {
    json!(
        entries(doc)
            .into_iter()
            .map(|e| json!({
                "kind": e.kind,
                "name": e.name,
                "title": e.title,
                "signed_at": e.signed_at,
                "heads": e.heads,
            }))
            .collect::<Vec<_>>()
    )
}

/// The most signatures a document may carry (a person and the organisation sign once
/// each, and again for a corrected version).
pub const MAX_SIGNATURES: usize = 64;

/// For a change received from a peer: every signature in `doc` must verify, a new one
/// for the very version it names, and none present at `before` (the heads held before
/// the change) may be gone or altered.
pub fn check_received(id: &DocId, doc: &Automerge, before: &[ChangeHash]) -> Result<(), String> {
    let now = entries(doc);
    if now.len() > MAX_SIGNATURES {
        return Err(format!(
            "the document carries {} signatures, more than {MAX_SIGNATURES}",
            now.len()
        ));
    }
    let then = if before.is_empty() {
        Vec::new()
    } else {
        entries_at(At {
            doc,
            heads: Some(before),
        })
    };
    for e in &then {
        if !now.contains(e) {
            return Err(format!(
                "the change removes or alters the signature by {:?}",
                e.name
            ));
        }
    }
    for e in &now {
        e.check(id.as_str())
            .map_err(|p| format!("a signature by {:?} does not verify: {p}", e.name))?;
        if then.contains(e) {
            continue;
        }
        let kind = SignatureKind::parse(&e.kind).ok_or("not a kind of signature")?;
        let heads = e
            .heads()
            .ok_or_else(|| format!("the signature by {:?} names no version", e.name))?;
        let hash = content_hash_at(doc, &heads, kind).map_err(|err| err.to_string())?;
        if hash != e.content_hash {
            return Err(format!(
                "the signature by {:?} does not match the version it names",
                e.name
            ));
        }
    }
    Ok(())
}
