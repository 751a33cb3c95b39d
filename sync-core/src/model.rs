//! The records Cabinet stores, as automerge documents with typed access.
//!
//! Every record is one automerge document whose root holds a `header` map (`kind`, `unit`,
//! `audience`, `created_by`, `created_at`) and a body that depends on the kind. Anything
//! with a different audience is a separate automerge document, because a document syncs
//! as a whole: a private note never lives inside a shared document.
//!
//! Layout of a `document` (văn bản, Decree 30/2020/NĐ-CP art. 8 and Appendix I):
//! the header fields of the decree as scalar strings at the root (`type`, `number`,
//! `notation`, `issuer`, `place`, `issued_date`, `subject`, …), `recipients` as a list,
//! `body` as automerge Text, and `deleted` (a map with `by` and `at`) once tombstoned.
//!
//! Layout of an `annotation`: `target` (document id), `anchor` (cursors into the target's
//! body, as strings: `start` at the first annotated character, `last` at the last one,
//! `end` at the character after the range), `text`, `author`, `visibility`, `shared_with`, `resolved`, and
//! `confidential` when it must not leave its unit (private, or on a secret document).
//!
//! All access goes through this module; nothing else reads raw paths.

use std::fmt;
use std::time::Duration;

use automerge::transaction::{Transactable, Transaction};
use automerge::{
    ActorId, Automerge, ChangeHash, Cursor, ObjId, ObjType, Prop, ROOT, ReadDoc, Value,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::determinism;

/// Editable scalar fields of a document, by their JSON (and automerge) key.
///
/// Decree 30/2020/NĐ-CP art. 8: type (tên loại), number (số), notation (ký hiệu), issuing
/// organisation (tên cơ quan ban hành), place and date (địa danh, ngày tháng năm), subject
/// (trích yếu), signer (quyền hạn, chức vụ, họ tên người ký), urgency (mức độ khẩn),
/// secrecy (độ mật), circulation (phạm vi lưu hành); plus the lifecycle state.
pub const DOCUMENT_FIELDS: &[&str] = &[
    "type",
    "number",
    "notation",
    "issuer",
    "parent_body",
    "place",
    "issued_date",
    "subject",
    "signer",
    "urgency",
    "secrecy",
    "circulation",
    "drafter",
    "due_date",
    "state",
];

/// A record id: a UUID in its hyphenated lower-case form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocId(String);

impl DocId {
    /// A fresh id, time-ordered so that new records cluster in the store's index.
    pub fn new() -> DocId {
        DocId(determinism::uuid_v7().hyphenated().to_string())
    }

    /// Accepts only the canonical hyphenated form, so one record has exactly one id.
    pub fn parse(s: &str) -> Result<DocId, ModelError> {
        match uuid::Uuid::try_parse(s) {
            Ok(u) if u.hyphenated().to_string() == s => Ok(DocId(s.to_string())),
            _ => Err(ModelError::BadId(s.chars().take(80).collect())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for DocId {
    fn default() -> Self {
        DocId::new()
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An official document (văn bản), outgoing or incoming.
    Document,
    /// A note anchored to a range of a document's body.
    Annotation,
    /// A numbering series (sổ) of one issuing body for one year, written by the unit's
    /// registrar when it closes the year. It never leaves its unit.
    Register,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Document => "document",
            Kind::Annotation => "annotation",
            Kind::Register => "register",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "document" => Some(Kind::Document),
            "annotation" => Some(Kind::Annotation),
            "register" => Some(Kind::Register),
            _ => None,
        }
    }
}

/// The typed header every record carries; the policy decides on it alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    /// The unit that owns the record (where it was created).
    pub unit: String,
    /// Unit codes that may see the record; always includes `unit`.
    pub audience: Vec<String>,
    pub created_by: String,
    pub created_at: String,
    /// A secret document (độ mật), a private annotation, or an annotation on a secret
    /// document: it never leaves its unit.
    pub confidential: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error(
        "{0:?} is not a record id (expected a UUID such as 0190f5c2-8a1b-7c3d-9e4f-001122334455)"
    )]
    BadId(String),
    #[error("the record has no valid header: {0}")]
    BadHeader(&'static str),
    #[error("the record is a {found}, not a {expected}")]
    WrongKind {
        expected: &'static str,
        found: &'static str,
    },
    #[error(
        "body_splice is out of range: the body has {len} characters, the splice asks for \
         position {pos} and {delete} deletions"
    )]
    SpliceOutOfRange {
        len: usize,
        pos: usize,
        delete: usize,
    },
    #[error("anchor {start}..{end} is not inside the body, which has {len} characters")]
    AnchorOutOfRange {
        start: usize,
        end: usize,
        len: usize,
    },
    #[error(
        "offset {offset} falls inside the character {character:?}, which spans offsets \
         {from}..{to} (offsets count Unicode scalar values; a character such as a letter \
         with its marks is not split): use {from} or {to}"
    )]
    InsideCharacter {
        offset: usize,
        character: String,
        from: usize,
        to: usize,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
}

/// `body_splice` of a PATCH: positions in Unicode scalar values.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BodySplice {
    pub pos: usize,
    #[serde(default)]
    pub delete: usize,
    #[serde(default)]
    pub insert: String,
}

/// The editable part of a document, as received from a clerk or an import.
///
/// Every field is optional: on creation a missing field stays unset, on PATCH it stays
/// as it is.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DocumentPatch {
    #[serde(rename = "type")]
    pub doc_type: Option<String>,
    pub number: Option<String>,
    pub notation: Option<String>,
    pub issuer: Option<String>,
    pub parent_body: Option<String>,
    pub place: Option<String>,
    pub issued_date: Option<String>,
    pub subject: Option<String>,
    pub signer: Option<String>,
    pub urgency: Option<String>,
    pub secrecy: Option<String>,
    pub circulation: Option<String>,
    pub drafter: Option<String>,
    pub due_date: Option<String>,
    /// Refused in a PATCH: a state changes only through a lifecycle action.
    pub state: Option<String>,
    /// `outgoing` (the default) or `incoming` (a document received on paper, say); set
    /// when the document is created and never changed.
    pub direction: Option<String>,
    pub recipients: Option<Vec<String>>,
    pub audience: Option<Vec<String>>,
    /// A whole new body, applied as the minimal text edit from the current one.
    pub body: Option<String>,
    pub body_splice: Option<BodySplice>,
    /// Set by the importer, never taken from a request: the document was numbered on
    /// paper, so its `number` is its place in the register.
    #[serde(skip)]
    pub imported: bool,
}

impl DocumentPatch {
    fn scalar_fields(&self) -> [(&'static str, Option<&str>); 14] {
        [
            ("type", self.doc_type.as_deref()),
            ("number", self.number.as_deref()),
            ("notation", self.notation.as_deref()),
            ("issuer", self.issuer.as_deref()),
            ("parent_body", self.parent_body.as_deref()),
            ("place", self.place.as_deref()),
            ("issued_date", self.issued_date.as_deref()),
            ("subject", self.subject.as_deref()),
            ("signer", self.signer.as_deref()),
            ("urgency", self.urgency.as_deref()),
            ("secrecy", self.secrecy.as_deref()),
            ("circulation", self.circulation.as_deref()),
            ("drafter", self.drafter.as_deref()),
            ("due_date", self.due_date.as_deref()),
        ]
    }
}

/// Who may read an annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Only the author's unit; it never leaves the unit's nodes.
    Private,
    /// The people named in `shared_with`.
    Shared,
    /// Everyone in the target document's audience.
    Audience,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Private => "private",
            Visibility::Shared => "shared",
            Visibility::Audience => "audience",
        }
    }
}

/// A range of a body in Unicode scalar values, `start <= end`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    pub start: usize,
    pub end: usize,
}

/// A new annotation as the API receives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAnnotation {
    pub text: String,
    pub anchor: Option<Anchor>,
    pub visibility: Visibility,
    #[serde(default)]
    pub shared_with: Vec<String>,
    /// Set by the node (who is signed in), never taken from the request.
    #[serde(skip)]
    pub author: Option<String>,
}

/// The current time in Vietnam's time zone, ISO 8601 (`2026-12-03T19:21:59+07:00`).
pub fn now_vietnam() -> String {
    let offset = chrono::FixedOffset::east_opt(7 * 3600).expect("+07:00 is a valid offset");
    let micros = determinism::now_micros() as i64;
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .with_timezone(&offset)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// A fresh actor id for one loaded copy of a document. Every copy that may be edited
/// gets its own, so two copies of one record (two processes on one store, or a copy
/// reloaded after a failed write) can never both extend the same actor's sequence, which
/// automerge would reject as a duplicate.
pub fn fresh_actor() -> ActorId {
    ActorId::from(determinism::random_bytes::<16>())
}

pub(crate) fn get_str<O: AsRef<ObjId>>(doc: &Automerge, obj: O, key: &str) -> Option<String> {
    match doc.get(obj, key).ok()?? {
        (Value::Scalar(s), _) => s.as_str().map(str::to_string),
        (Value::Object(ObjType::Text), id) => doc.text(&id).ok(),
        _ => None,
    }
}

pub(crate) fn get_bool<O: AsRef<ObjId>>(doc: &Automerge, obj: O, key: &str) -> Option<bool> {
    match doc.get(obj, key).ok()?? {
        (Value::Scalar(s), _) => match s.as_ref() {
            automerge::ScalarValue::Boolean(b) => Some(*b),
            _ => None,
        },
        _ => None,
    }
}

pub(crate) fn get_obj<O: AsRef<ObjId>>(
    doc: &Automerge,
    obj: O,
    key: &str,
    ty: ObjType,
) -> Option<ObjId> {
    match doc.get(obj, key).ok()?? {
        (Value::Object(t), id) if t == ty => Some(id),
        _ => None,
    }
}

pub(crate) fn get_str_list<O: AsRef<ObjId>>(
    doc: &Automerge,
    obj: O,
    key: &str,
) -> Option<Vec<String>> {
    let list = get_obj(doc, obj, key, ObjType::List)?;
    let mut out = Vec::new();
    for i in 0..doc.length(&list) {
        if let Some((Value::Scalar(s), _)) = doc.get(&list, i).ok()?
            && let Some(s) = s.as_str()
        {
            out.push(s.to_string());
        }
    }
    Some(out)
}

pub(crate) fn put_str_list(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    key: &str,
    items: &[String],
) -> Result<(), ModelError> {
    let list = tx.put_object(obj, key, ObjType::List)?;
    for (i, item) in items.iter().enumerate() {
        tx.insert(&list, i, item.as_str())?;
    }
    Ok(())
}

/// A document as it is now (`heads` is `None`) or as it was at `heads`, read without
/// forking it.
#[derive(Clone, Copy)]
pub struct At<'a> {
    pub doc: &'a Automerge,
    pub heads: Option<&'a [ChangeHash]>,
}

impl<'a> At<'a> {
    /// The document as it is now.
    pub fn now(doc: &'a Automerge) -> At<'a> {
        At { doc, heads: None }
    }

    pub fn get(&self, obj: &ObjId, prop: Prop) -> Option<(Value<'_>, ObjId)> {
        match self.heads {
            Some(h) => self.doc.get_at(obj, prop, h),
            None => self.doc.get(obj, prop),
        }
        .ok()
        .flatten()
    }

    pub fn length(&self, obj: &ObjId) -> usize {
        match self.heads {
            Some(h) => self.doc.length_at(obj, h),
            None => self.doc.length(obj),
        }
    }

    pub fn text(&self, obj: &ObjId) -> Option<String> {
        match self.heads {
            Some(h) => self.doc.text_at(obj, h),
            None => self.doc.text(obj),
        }
        .ok()
    }

    /// A string, whether kept as a scalar or as Text.
    pub fn str(&self, obj: &ObjId, key: &str) -> Option<String> {
        match self.get(obj, key.into())? {
            (Value::Scalar(v), _) => v.as_str().map(str::to_string),
            (Value::Object(ObjType::Text), t) => self.text(&t),
            _ => None,
        }
    }

    pub fn str_list(&self, obj: &ObjId, key: &str) -> Option<Vec<String>> {
        let (Value::Object(ObjType::List), list) = self.get(obj, key.into())? else {
            return None;
        };
        Some(
            (0..self.length(&list))
                .filter_map(|i| match self.get(&list, i.into())? {
                    (Value::Scalar(v), _) => v.as_str().map(str::to_string),
                    _ => None,
                })
                .collect(),
        )
    }
}

impl At<'_> {
    /// Any value as JSON: maps and lists recursively, Text as a string, scalars as
    /// they are (a counter or timestamp as its number, bytes as null).
    pub fn json(&self, obj: &ObjId, prop: Prop) -> Json {
        let Some((value, id)) = self.get(obj, prop) else {
            return Json::Null;
        };
        match value {
            Value::Scalar(s) => match s.as_ref() {
                automerge::ScalarValue::Str(t) => json!(t.as_str()),
                automerge::ScalarValue::Int(i) => json!(i),
                automerge::ScalarValue::Uint(u) => json!(u),
                automerge::ScalarValue::F64(f) => json!(f),
                automerge::ScalarValue::Boolean(b) => json!(b),
                automerge::ScalarValue::Counter(c) => json!(i64::from(c)),
                automerge::ScalarValue::Timestamp(t) => json!(t),
                _ => Json::Null,
            },
            Value::Object(ObjType::Text) => json!(self.text(&id)),
            Value::Object(ObjType::List) => Json::Array(
                (0..self.length(&id))
                    .map(|i| self.json(&id, i.into()))
                    .collect(),
            ),
            Value::Object(_) => self.map(&id),
        }
    }

    /// A map object as JSON, every key with its value as [`At::json`] reads it.
    pub fn map(&self, obj: &ObjId) -> Json {
        let keys: Vec<String> = match self.heads {
            Some(h) => self.doc.keys_at(obj, h).collect(),
            None => self.doc.keys(obj).collect(),
        };
        Json::Object(
            keys.into_iter()
                .map(|k| {
                    let v = self.json(obj, k.as_str().into());
                    (k, v)
                })
                .collect(),
        )
    }
}

thread_local! {
    /// Who the changes made on this thread are made by (see [`as_author`]).
    static AUTHOR: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with every change it makes recorded as made by `by` on `node`: the author is
/// kept in each automerge change's message, so a document's history says who changed
/// what.
pub fn as_author<R>(by: &str, node: &str, f: impl FnOnce() -> R) -> R {
    let message = json!({ "by": by, "node": node }).to_string();
    let previous = AUTHOR.with(|a| a.borrow_mut().replace(message));
    let result = f();
    AUTHOR.with(|a| *a.borrow_mut() = previous);
    result
}

/// Commits a change with its author (if one is set) and the time from the clock the
/// simulation can seed.
pub(crate) fn commit(tx: Transaction<'_>) {
    let time = (determinism::now_micros() / 1000) as i64;
    let mut options = automerge::transaction::CommitOptions::default().with_time(time);
    if let Some(message) = AUTHOR.with(|a| a.borrow().clone()) {
        options = options.with_message(message);
    }
    tx.commit_with(options);
}

/// Is `v` a date of the form YYYY-MM-DD (`2026-07-01`)?
pub(crate) fn is_iso_date(v: &str) -> bool {
    v.len() == 10
        && v.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
        && chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").is_ok()
}

/// The list at a root key, made if the record has none yet.
pub(crate) fn list_or_new(tx: &mut Transaction<'_>, key: &str) -> Result<ObjId, ModelError> {
    Ok(match tx.get(ROOT, key)? {
        Some((Value::Object(ObjType::List), list)) => list,
        _ => tx.put_object(ROOT, key, ObjType::List)?,
    })
}

/// Reads the header of any record. A record without a usable header is refused
/// everywhere: the policy cannot place it.
pub fn read_header(doc: &Automerge) -> Result<Header, ModelError> {
    let h = get_obj(doc, ROOT, "header", ObjType::Map).ok_or(ModelError::BadHeader("missing"))?;
    let kind = get_str(doc, &h, "kind")
        .and_then(|k| Kind::parse(&k))
        .ok_or(ModelError::BadHeader("unknown kind"))?;
    let unit = get_str(doc, &h, "unit").ok_or(ModelError::BadHeader("no unit"))?;
    let mut audience = get_str_list(doc, &h, "audience").unwrap_or_default();
    if !audience.contains(&unit) {
        audience.push(unit.clone());
    }
    audience.sort();
    audience.dedup();
    let confidential = match kind {
        Kind::Document => get_str(doc, ROOT, "secrecy").is_some_and(|s| !s.trim().is_empty()),
        Kind::Annotation => {
            let visibility = get_str(doc, ROOT, "visibility");
            // Private notes and notes shared with named people stay on the nodes of the
            // author's unit; only those for the document's whole audience travel.
            let names = get_str_list(doc, ROOT, "shared_with").map_or(0, |l| l.len());
            let shared = visibility.as_deref() == Some("audience")
                || (visibility.as_deref() == Some("shared")
                    && !shares_with_names(visibility.as_deref(), names));
            !shared || get_bool(doc, ROOT, "confidential").unwrap_or(false)
        }
        Kind::Register => true,
    };
    Ok(Header {
        kind,
        unit,
        audience,
        created_by: get_str(doc, &h, "created_by").unwrap_or_default(),
        created_at: get_str(doc, &h, "created_at").unwrap_or_default(),
        confidential,
    })
}

pub(crate) fn write_header(tx: &mut Transaction<'_>, header: &Header) -> Result<(), ModelError> {
    let h = tx.put_object(ROOT, "header", ObjType::Map)?;
    tx.put(&h, "kind", header.kind.as_str())?;
    tx.put(&h, "unit", header.unit.as_str())?;
    put_str_list(tx, &h, "audience", &header.audience)?;
    tx.put(&h, "created_by", header.created_by.as_str())?;
    tx.put(&h, "created_at", header.created_at.as_str())?;
    Ok(())
}

pub(crate) fn body_obj(doc: &Automerge) -> Result<ObjId, ModelError> {
    get_obj(doc, ROOT, "body", ObjType::Text).ok_or(ModelError::BadHeader("document has no body"))
}

/// Creates a new `document` record.
pub fn create_document(header: &Header, fields: &DocumentPatch) -> Result<Automerge, ModelError> {
    let direction = match fields.direction.as_deref() {
        None | Some("outgoing") => crate::lifecycle::Direction::Outgoing,
        Some("incoming") => crate::lifecycle::Direction::Incoming,
        Some(other) => {
            return Err(ModelError::Invalid(format!(
                "direction {other:?} is neither \"outgoing\" nor \"incoming\""
            )));
        }
    };
    let mut doc = Automerge::new().with_actor(fresh_actor());
    let mut tx = doc.transaction();
    write_header(&mut tx, header)?;
    tx.put_object(ROOT, "body", ObjType::Text)?;
    tx.put(ROOT, "direction", direction.as_str())?;
    tx.put(ROOT, "state", direction.initial_state())?;
    if fields.imported {
        tx.put(ROOT, "origin", "import")?;
    }
    // Made with the document, so two nodes taking the first step or signing first at
    // once append to one list instead of each creating its own.
    tx.put_object(ROOT, "history", ObjType::List)?;
    tx.put_object(ROOT, "signatures", ObjType::List)?;
    commit(tx);
    let fields = DocumentPatch {
        direction: None,
        ..fields.clone()
    };
    update_document(&mut doc, &fields)?;
    Ok(doc)
}

/// Applies a clerk's PATCH (or the fields of a new document) in one change.
pub fn update_document(doc: &mut Automerge, patch: &DocumentPatch) -> Result<(), ModelError> {
    expect_kind(doc, Kind::Document)?;
    if patch.state.is_some() {
        return Err(ModelError::Invalid(
            "\"state\" changes only through a lifecycle action: POST \
             /api/v1/documents/{id}/actions (see docs/api.md)"
                .into(),
        ));
    }
    if patch.direction.is_some() {
        return Err(ModelError::Invalid(
            "\"direction\" is set when a document is created and never changes".into(),
        ));
    }
    if let Some(state) = get_str(doc, ROOT, "state")
        && crate::lifecycle::is_frozen(&state)
    {
        return Err(ModelError::Invalid(
            "the document was recalled: it is frozen and takes no more edits".into(),
        ));
    }
    if crate::lifecycle::content_fixed(doc) {
        let state = get_str(doc, ROOT, "state").unwrap_or_default();
        return Err(ModelError::Invalid(
            if state == crate::lifecycle::AWAITING_NUMBER {
                "the document is awaiting its number: its content is fixed; withdraw the number \
             request (withdraw_number) to edit it"
                    .into()
            } else {
                "the document was issued (numbered): its content is fixed; correct or replace it \
             with another document"
                    .into()
            },
        ));
    }
    let outgoing = crate::lifecycle::Direction::of(doc) == crate::lifecycle::Direction::Outgoing;
    let registered = get_obj(doc, ROOT, "registration", ObjType::Map).is_some();
    if outgoing && registered && (patch.number.is_some() || patch.issued_date.is_some()) {
        return Err(ModelError::Invalid(
            "the number and date of issue were given by the register and cannot be edited".into(),
        ));
    }
    if outgoing && patch.number.is_some() && !crate::lifecycle::is_imported(doc) {
        return Err(ModelError::Invalid(
            "an outgoing document's number comes from the register: take the \"number\" \
             action (documents numbered on paper come in with cabinet-node import)"
                .into(),
        ));
    }
    let texts = [
        ("type", &patch.doc_type),
        ("number", &patch.number),
        ("notation", &patch.notation),
        ("issuer", &patch.issuer),
        ("parent_body", &patch.parent_body),
        ("place", &patch.place),
        ("subject", &patch.subject),
        ("signer", &patch.signer),
        ("urgency", &patch.urgency),
        ("secrecy", &patch.secrecy),
        ("circulation", &patch.circulation),
        ("drafter", &patch.drafter),
        ("body", &patch.body),
    ];
    // Only what changes is checked: a version restored, or a field sent back as it
    // was, passes whatever it holds.
    for (key, value) in texts {
        if let Some(v) = value {
            let current = match key {
                "body" => body_text(doc).ok(),
                _ => get_str(doc, ROOT, key),
            };
            if current.as_deref() != Some(v.as_str()) {
                check_text(key, v)?;
            }
        }
    }
    let recipients = get_str_list(doc, ROOT, "recipients").unwrap_or_default();
    for r in patch.recipients.iter().flatten() {
        if !recipients.contains(r) {
            check_text("recipients", r)?;
        }
    }
    if let Some(s) = &patch.body_splice {
        check_text("body_splice.insert", &s.insert)?;
    }
    for (key, value) in [
        ("issued_date", &patch.issued_date),
        ("due_date", &patch.due_date),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty())
            && !is_iso_date(v)
        {
            return Err(ModelError::Invalid(format!(
                "{key} {v:?} is not a date of the form YYYY-MM-DD (such as 2026-07-01)"
            )));
        }
    }
    let body = body_obj(doc)?;
    if let Some(s) = &patch.body_splice {
        let len = doc.length(&body);
        if s.pos > len || s.delete > len - s.pos {
            return Err(ModelError::SpliceOutOfRange {
                len,
                pos: s.pos,
                delete: s.delete,
            });
        }
        let text = doc.text(&body)?;
        check_boundary(&text, s.pos)?;
        check_boundary(&text, s.pos + s.delete)?;
    }
    if patch.body.is_some() && patch.body_splice.is_some() {
        return Err(ModelError::Invalid(
            "send either \"body\" or \"body_splice\", not both".into(),
        ));
    }
    let mut tx = doc.transaction();
    for (key, value) in patch.scalar_fields() {
        if let Some(v) = value {
            tx.put(ROOT, key, v)?;
        }
    }
    if let Some(r) = &patch.recipients {
        put_str_list(&mut tx, &ROOT, "recipients", r)?;
    }
    if let Some(a) = &patch.audience {
        let h = get_obj_tx(&tx, "header")?;
        put_str_list(&mut tx, &h, "audience", a)?;
    }
    if let Some(text) = &patch.body {
        let current = tx.text(&body)?;
        for (pos, delete, insert) in text_edits(&current, text) {
            tx.splice_text(&body, pos, delete as isize, &insert)?;
        }
    }
    if let Some(s) = &patch.body_splice {
        tx.splice_text(&body, s.pos, s.delete as isize, &s.insert)?;
    }
    commit(tx);
    Ok(())
}

/// How long a diff of a whole new body may search for the smallest edit.
const DIFF_BUDGET: Duration = Duration::from_millis(100);

/// The splices that turn `old` into `new`, last first (so each position is still valid
/// when it is applied), in Unicode scalar values. The edit is minimal when the diff finds
/// it within [`DIFF_BUDGET`]; past that the diff settles for a coarser one, which gives
/// the same text, so a clerk pasting a whole redraft of a long document never stalls the
/// node. Concurrent edits elsewhere in the text still merge, since untouched parts are
/// left alone.
fn text_edits(old: &str, new: &str) -> Vec<(usize, usize, String)> {
    let diff = similar::TextDiff::configure()
        .timeout(DIFF_BUDGET)
        .diff_chars(old, new);
    let new_chars: Vec<char> = new.chars().collect();
    let mut edits: Vec<(usize, usize, String)> = diff
        .ops()
        .iter()
        .map(similar::DiffOp::as_tag_tuple)
        .filter(|(tag, _, _)| *tag != similar::DiffTag::Equal)
        .map(|(_, old, new)| (old.start, old.len(), new_chars[new].iter().collect()))
        .collect();
    edits.reverse();
    edits
}

fn get_obj_tx(tx: &Transaction<'_>, key: &str) -> Result<ObjId, ModelError> {
    match tx.get(ROOT, key)? {
        Some((Value::Object(ObjType::Map), id)) => Ok(id),
        _ => Err(ModelError::BadHeader("missing")),
    }
}

/// Splices the body directly: the path used by bulk edits such as replaying a trace.
pub fn splice_body(
    doc: &mut Automerge,
    pos: usize,
    delete: usize,
    insert: &str,
) -> Result<(), ModelError> {
    let body = body_obj(doc)?;
    let len = doc.length(&body);
    if pos > len || delete > len - pos {
        return Err(ModelError::SpliceOutOfRange { len, pos, delete });
    }
    let mut tx = doc.transaction();
    tx.splice_text(&body, pos, delete as isize, insert)?;
    commit(tx);
    Ok(())
}

/// Applies many splices to the body as one change (one transaction): the path for bulk
/// edits such as replaying an editing trace. Each splice is checked against the length
/// the body has after the ones before it; if any is out of range, none is applied.
pub fn splice_body_batch<'a>(
    doc: &mut Automerge,
    splices: impl IntoIterator<Item = (usize, usize, &'a str)>,
) -> Result<(), ModelError> {
    let body = body_obj(doc)?;
    let mut len = doc.length(&body);
    let mut tx = doc.transaction();
    for (pos, delete, insert) in splices {
        if pos > len || delete > len - pos {
            tx.rollback();
            return Err(ModelError::SpliceOutOfRange { len, pos, delete });
        }
        tx.splice_text(&body, pos, delete as isize, insert)?;
        len = len - delete + insert.chars().count();
    }
    commit(tx);
    Ok(())
}

/// The current body text of a document.
pub fn body_text(doc: &Automerge) -> Result<String, ModelError> {
    Ok(doc.text(body_obj(doc)?)?)
}

/// Marks a record deleted (a tombstone with who and when), synced like any change.
pub fn tombstone(doc: &mut Automerge, by: &str) -> Result<(), ModelError> {
    let mut tx = doc.transaction();
    let d = tx.put_object(ROOT, "deleted", ObjType::Map)?;
    tx.put(&d, "by", by)?;
    tx.put(&d, "at", now_vietnam())?;
    commit(tx);
    Ok(())
}

pub fn is_deleted(doc: &Automerge) -> bool {
    get_obj(doc, ROOT, "deleted", ObjType::Map).is_some()
}

pub(crate) fn expect_kind(doc: &Automerge, kind: Kind) -> Result<(), ModelError> {
    let found = read_header(doc)?.kind;
    if found != kind {
        return Err(ModelError::WrongKind {
            expected: kind.as_str(),
            found: found.as_str(),
        });
    }
    Ok(())
}

/// Sorted hex change hashes: the form heads take in the API and in signatures.
pub fn heads_hex(heads: &[ChangeHash]) -> Vec<String> {
    let mut h: Vec<String> = heads.iter().map(|h| h.to_string()).collect();
    h.sort();
    h
}

/// The JSON a clerk (and the API) sees for a record of any kind.
pub fn to_json(id: &DocId, doc: &Automerge) -> Result<Json, ModelError> {
    let header = read_header(doc)?;
    let mut out = json!({
        "id": id.as_str(),
        "kind": header.kind.as_str(),
        "unit": header.unit,
        "audience": header.audience,
        "created_by": header.created_by,
        "created_at": header.created_at,
        "heads": heads_hex(&doc.get_heads()),
        "deleted": is_deleted(doc),
    });
    let obj = out.as_object_mut().expect("built as an object");
    if let Some(d) = get_obj(doc, ROOT, "deleted", ObjType::Map) {
        obj.insert("deleted_by".into(), json!(get_str(doc, &d, "by")));
        obj.insert("deleted_at".into(), json!(get_str(doc, &d, "at")));
        obj.insert("deletion_conflict".into(), deletion_conflict(doc));
    } else {
        obj.insert("deletion_conflict".into(), Json::Null);
    }
    match header.kind {
        Kind::Document => {
            for key in DOCUMENT_FIELDS {
                obj.insert((*key).into(), json!(get_str(doc, ROOT, key)));
            }
            obj.insert(
                "recipients".into(),
                json!(get_str_list(doc, ROOT, "recipients").unwrap_or_default()),
            );
            obj.insert("body".into(), json!(body_text(doc)?));
            obj.insert("attachments".into(), json!(attachments(At::now(doc))));
            obj.insert("conflicts".into(), conflicts(doc));
            crate::lifecycle::json_fields(&header, doc, obj);
        }
        Kind::Register => crate::lifecycle::register_json_fields(doc, obj),
        Kind::Annotation => {
            for key in [
                "target",
                "text",
                "author",
                "visibility",
                "resolved_by",
                "resolved_at",
            ] {
                obj.insert(key.into(), json!(get_str(doc, ROOT, key)));
            }
            let replies = At::now(doc).json(&ROOT, "replies".into());
            obj.insert(
                "replies".into(),
                if replies.is_array() {
                    replies
                } else {
                    json!([])
                },
            );
            obj.insert(
                "shared_with".into(),
                json!(get_str_list(doc, ROOT, "shared_with").unwrap_or_default()),
            );
            obj.insert(
                "resolved".into(),
                json!(get_bool(doc, ROOT, "resolved").unwrap_or(false)),
            );
        }
    }
    Ok(out)
}

/// The document fields that two people set concurrently to different values: for each,
/// every value, in automerge's order (the same on every node), the one the field shows
/// first. Setting the field again (a PATCH) resolves it.
fn conflicts(doc: &Automerge) -> Json {
    let mut out = serde_json::Map::new();
    for key in DOCUMENT_FIELDS {
        let Ok(values) = doc.get_all(ROOT, *key) else {
            continue;
        };
        if values.len() < 2 {
            continue;
        }
        let mut texts: Vec<Json> = values
            .iter()
            .map(|(v, _)| match v {
                Value::Scalar(s) => json!(s.as_str()),
                _ => Json::Null,
            })
            .collect();
        // The value shown (automerge's winner) comes last in its order: put it first.
        texts.reverse();
        texts.dedup();
        if texts.len() > 1 {
            out.insert((*key).to_string(), Json::Array(texts));
        }
    }
    Json::Object(out)
}

/// A time stamp of an automerge change (milliseconds since 1970) in Vietnam's time zone.
fn time_vietnam(millis: i64) -> String {
    let offset = chrono::FixedOffset::east_opt(7 * 3600).expect("+07:00 is a valid offset");
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .with_timezone(&offset)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// The changes of a record, newest first (at most `limit`, after skipping the `skip`
/// newest): each with its hash, the heads it was made on, when, by whom and on which
/// node (as recorded when it was made; `null` for changes made by no one signed in, or
/// before authors were recorded), and the fields it touched.
pub fn history(doc: &Automerge, skip: usize, limit: usize) -> Vec<Json> {
    let changes = doc.get_changes(&[]);
    changes
        .iter()
        .rev()
        .skip(skip)
        .take(limit)
        .map(|c| change_json(doc, c))
        .collect()
}

/// One change as the history shows it.
fn change_json(doc: &Automerge, c: &automerge::Change) -> Json {
    let author: Json = c
        .message()
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or(Json::Null);
    let mut fields: Vec<String> = doc
        .diff(c.deps(), &[c.hash()])
        .into_iter()
        .filter_map(|p| match p.path.first() {
            Some((_, automerge::Prop::Map(key))) => Some(key.clone()),
            Some(_) => None,
            None => match p.action {
                automerge::PatchAction::PutMap { key, .. }
                | automerge::PatchAction::DeleteMap { key } => Some(key),
                automerge::PatchAction::Conflict {
                    prop: automerge::Prop::Map(key),
                } => Some(key),
                _ => None,
            },
        })
        .collect();
    fields.sort();
    fields.dedup();
    json!({
        "hash": c.hash().to_string(),
        "deps": heads_hex(c.deps()),
        "at": time_vietnam(c.timestamp()),
        "by": author.get("by"),
        "node": author.get("node"),
        "fields": fields,
    })
}

/// For a deleted record, the changes its deletion did not see: edits made (offline,
/// as a rule) concurrently with the tombstone, which neither came before it nor were
/// made knowing of it. `null` when there are none. The answer depends only on the
/// change graph, so every node that holds the same changes shows the same conflict.
/// It ends when a person decides: deleting again (a tombstone that has seen the
/// edits) or restoring the record (see [`undelete`]).
pub fn deletion_conflict(doc: &Automerge) -> Json {
    let Ok(tombstones) = doc.get_all(ROOT, "deleted") else {
        return Json::Null;
    };
    let marks: Vec<ChangeHash> = tombstones
        .iter()
        .filter_map(|(_, id)| doc.hash_for_opid(id))
        .collect();
    if marks.is_empty() {
        return Json::Null;
    }
    // Changes that are neither the tombstones nor their ancestors, in causal order;
    // those descending from a tombstone were made after it was seen.
    let mut after: std::collections::HashSet<ChangeHash> = marks.iter().copied().collect();
    let mut edits = Vec::new();
    for c in doc.get_changes(&marks) {
        if c.deps().iter().any(|d| after.contains(d)) {
            after.insert(c.hash());
        } else {
            edits.push(change_json(doc, &c));
        }
    }
    if edits.is_empty() {
        return Json::Null;
    }
    edits.sort_by(|x, y| x["hash"].as_str().cmp(&y["hash"].as_str()));
    json!({ "edits": edits })
}

/// Brings a deleted record back, with every change it holds (a new change: the
/// tombstone stays in the history).
pub fn undelete(doc: &mut Automerge) -> Result<(), ModelError> {
    let mut tx = doc.transaction();
    tx.delete(ROOT, "deleted")?;
    commit(tx);
    Ok(())
}

/// Parses heads given as hex change hashes; each must be in `doc`'s history.
pub fn parse_heads(doc: &Automerge, hex: &[String]) -> Result<Vec<ChangeHash>, ModelError> {
    if hex.is_empty() {
        return Err(ModelError::Invalid("name a version by its heads".into()));
    }
    hex.iter()
        .map(|h| {
            let hash: ChangeHash = h
                .parse()
                .map_err(|_| ModelError::Invalid(format!("{h:?} is not a change hash")))?;
            if doc.get_change_by_hash(&hash).is_none() {
                return Err(ModelError::Invalid(format!(
                    "{h} is not a change of this document"
                )));
            }
            Ok(hash)
        })
        .collect()
}

/// The record as it was at `heads` (a version named by the history).
pub fn version_json(id: &DocId, doc: &Automerge, heads: &[ChangeHash]) -> Result<Json, ModelError> {
    to_json(id, &doc.fork_at(heads)?)
}

/// Makes a document's content what it was at `heads`, as a new change on top of the
/// current one (nothing is rewritten: the history keeps every version). The lifecycle,
/// audience and signatures stay as they are; the body changes by the smallest edit.
pub fn restore(doc: &mut Automerge, heads: &[ChangeHash]) -> Result<(), ModelError> {
    expect_kind(doc, Kind::Document)?;
    let old = doc.fork_at(heads)?;
    let text = |key: &str| Some(get_str(&old, ROOT, key).unwrap_or_default());
    let patch = DocumentPatch {
        doc_type: text("type"),
        notation: text("notation"),
        issuer: text("issuer"),
        parent_body: text("parent_body"),
        place: text("place"),
        issued_date: text("issued_date"),
        subject: text("subject"),
        signer: text("signer"),
        urgency: text("urgency"),
        secrecy: text("secrecy"),
        circulation: text("circulation"),
        drafter: text("drafter"),
        due_date: text("due_date"),
        recipients: Some(get_str_list(&old, ROOT, "recipients").unwrap_or_default()),
        body: Some(body_text(&old)?),
        ..Default::default()
    };
    update_document(doc, &patch)
}

/// A file attached to a document: the file itself is stored once under its BLAKE3
/// hash (see [`crate::blobs`]); the document lists it with its name, size and type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub hash: String,
    pub name: String,
    pub size: u64,
    pub media_type: String,
    #[serde(default)]
    pub added_by: Option<String>,
    #[serde(default)]
    pub added_at: Option<String>,
    /// The node it was attached on: a file is not served to the unit that listed it
    /// unless that unit gave it (see `net`).
    #[serde(default)]
    pub added_on: Option<String>,
}

impl Attachment {
    /// Whether a listed attachment can be acted on: a hash of 64 hex digits and a size
    /// this node would store. Entries that are not (from a faulty peer) are left out.
    fn is_usable(&self) -> bool {
        crate::blobs::parse_hash(&self.hash).is_ok()
            && self.size <= crate::blobs::MAX_ATTACHMENT_BYTES
            && !self.name.is_empty()
    }
}

/// The attachments a document lists (usable ones, in the order they were added).
pub fn attachments(at: At<'_>) -> Vec<Attachment> {
    let Some((Value::Object(ObjType::List), list)) = at.get(&ROOT, "attachments".into()) else {
        return Vec::new();
    };
    (0..at.length(&list))
        .filter_map(|i| serde_json::from_value::<Attachment>(at.json(&list, i.into())).ok())
        .filter(Attachment::is_usable)
        .collect()
}

/// The attachments listed in a record's JSON (as [`to_json`] wrote it).
pub fn attachments_in_json(json: &Json) -> Vec<Attachment> {
    json.get("attachments")
        .and_then(Json::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|a| serde_json::from_value::<Attachment>(a.clone()).ok())
                .filter(Attachment::is_usable)
                .collect()
        })
        .unwrap_or_default()
}

/// Lists a file on a document, once: a file it lists already (by hash) is refused,
/// under whatever name.
pub fn add_attachment(doc: &mut Automerge, attachment: &Attachment) -> Result<(), ModelError> {
    expect_kind(doc, Kind::Document)?;
    if !attachment.is_usable() {
        return Err(ModelError::Invalid(
            "an attachment needs a name, a BLAKE3 hash and a size".into(),
        ));
    }
    if let Some(listed) = attachments(At::now(doc))
        .iter()
        .find(|a| a.hash == attachment.hash)
    {
        return Err(ModelError::Invalid(format!(
            "the document lists this file already, as {:?}",
            listed.name
        )));
    }
    let mut tx = doc.transaction();
    let list = list_or_new(&mut tx, "attachments")?;
    let at = tx.length(&list);
    let entry = tx.insert_object(&list, at, ObjType::Map)?;
    tx.put(&entry, "hash", attachment.hash.as_str())?;
    tx.put(&entry, "name", attachment.name.as_str())?;
    tx.put(&entry, "size", attachment.size)?;
    tx.put(&entry, "media_type", attachment.media_type.as_str())?;
    if let Some(by) = &attachment.added_by {
        tx.put(&entry, "added_by", by.as_str())?;
    }
    if let Some(node) = &attachment.added_on {
        tx.put(&entry, "added_on", node.as_str())?;
    }
    tx.put(&entry, "added_at", now_vietnam())?;
    commit(tx);
    Ok(())
}

/// Takes a file off a document's list (every entry with that hash); the file stays
/// stored, since other documents may list it. Returns whether the document changed.
pub fn remove_attachment(doc: &mut Automerge, hash: &str) -> Result<bool, ModelError> {
    expect_kind(doc, Kind::Document)?;
    let Some(list) = get_obj(doc, ROOT, "attachments", ObjType::List) else {
        return Ok(false);
    };
    let at = At::now(doc);
    let doomed: Vec<usize> = (0..at.length(&list))
        .filter(|i| at.json(&list, (*i).into())["hash"] == hash)
        .collect();
    if doomed.is_empty() {
        return Ok(false);
    }
    let mut tx = doc.transaction();
    for i in doomed.into_iter().rev() {
        tx.delete(&list, i)?;
    }
    commit(tx);
    Ok(true)
}

/// The id of the document an annotation points at.
pub fn annotation_target(doc: &Automerge) -> Option<DocId> {
    get_str(doc, ROOT, "target").and_then(|t| DocId::parse(&t).ok())
}

/// Creates an annotation anchored with cursors into `target`'s body, so the range follows
/// concurrent edits made elsewhere in the text.
pub fn create_annotation(
    header: &Header,
    target_id: &DocId,
    target: &Automerge,
    input: &NewAnnotation,
) -> Result<Automerge, ModelError> {
    expect_kind(target, Kind::Document)?;
    // A note on a secret document is as secret as the document.
    let target_secret = read_header(target)?.confidential;
    check_annotation_input(input)?;
    let anchor = match input.anchor {
        Some(a) => {
            let body = body_obj(target)?;
            let len = target.length(&body);
            if a.start > a.end {
                return Err(ModelError::Invalid(format!(
                    "anchor {}..{}: the start comes after the end",
                    a.start, a.end
                )));
            }
            if a.end > len {
                return Err(ModelError::AnchorOutOfRange {
                    start: a.start,
                    end: a.end,
                    len,
                });
            }
            let text = target.text(&body)?;
            check_boundary(&text, a.start)?;
            check_boundary(&text, a.end)?;
            // The start cursor sticks to the first annotated character and the `last`
            // cursor to the last one, so text typed inside the range stays inside it and
            // text typed just before or after it stays out. If its first character is
            // deleted the start moves forward, if its last one is the end moves back; when
            // they cross, the annotated text is gone.
            let start = if a.start == len {
                target.get_cursor(&body, automerge::CursorPosition::End, None)?
            } else {
                target.get_cursor(&body, a.start, None)?
            };
            let last = if a.end > a.start {
                Some(target.get_cursor_moving(
                    &body,
                    a.end - 1,
                    None,
                    automerge::MoveCursor::Before,
                )?)
            } else {
                None
            };
            // And one on the character after the range (or the end of the text), which
            // bounds the range when the last character is gone and nothing before the
            // range is left for the `last` cursor to fall back on.
            let end = if a.end == len {
                target.get_cursor(&body, automerge::CursorPosition::End, None)?
            } else {
                target.get_cursor(&body, a.end, None)?
            };
            Some((start, last, end))
        }
        None => None,
    };
    let mut doc = Automerge::new().with_actor(fresh_actor());
    let mut tx = doc.transaction();
    write_header(&mut tx, header)?;
    tx.put(ROOT, "target", target_id.as_str())?;
    if let Some((start, last, end)) = anchor {
        let a = tx.put_object(ROOT, "anchor", ObjType::Map)?;
        tx.put(&a, "start", start.to_string())?;
        if let Some(last) = last {
            tx.put(&a, "last", last.to_string())?;
        }
        tx.put(&a, "end", end.to_string())?;
    }
    if header.confidential || target_secret {
        // Kept in the annotation itself, so every hop knows it must not leave the unit
        // without looking at the document it annotates.
        tx.put(ROOT, "confidential", true)?;
    }
    tx.put(ROOT, "text", input.text.as_str())?;
    tx.put(ROOT, "author", input.author.as_deref().unwrap_or(""))?;
    tx.put(ROOT, "visibility", input.visibility.as_str())?;
    put_str_list(&mut tx, &ROOT, "shared_with", &input.shared_with)?;
    tx.put(ROOT, "resolved", false)?;
    commit(tx);
    Ok(doc)
}

/// Refuses control characters other than line breaks and tabs in a text field: a NUL
/// or an escape code typed or pasted by mistake would end up in printed registers and
/// exports. Line breaks include the vertical tab and form feed word processors write
/// (a line break and a page break) and U+0085.
pub fn check_text(field: &str, value: &str) -> Result<(), ModelError> {
    match value.chars().find(|c| {
        c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\u{0B}' | '\u{0C}' | '\u{85}')
    }) {
        Some(c) => Err(ModelError::Invalid(format!(
            "{field} holds the control character U+{:04X}; remove it",
            c as u32
        ))),
        None => Ok(()),
    }
}

/// The most people an annotation is shared with by name.
pub const MAX_SHARED_WITH: usize = 64;

/// The text of an annotation or a reply (`what`): not blank, no control characters.
fn check_note_text(what: &str, text: &str) -> Result<(), ModelError> {
    if text.trim().is_empty() {
        return Err(ModelError::Invalid(format!("{what} needs some text")));
    }
    check_text("text", text)
}

fn check_annotation_input(input: &NewAnnotation) -> Result<(), ModelError> {
    check_note_text("an annotation", &input.text)?;
    match input.visibility {
        Visibility::Shared if input.shared_with.is_empty() => Err(ModelError::Invalid(
            "visibility \"shared\" needs shared_with: the sign-in names of the people who \
             may read it"
                .into(),
        )),
        Visibility::Shared if input.shared_with.len() > MAX_SHARED_WITH => Err(
            ModelError::Invalid(format!("share with at most {MAX_SHARED_WITH} people")),
        ),
        Visibility::Private | Visibility::Audience if !input.shared_with.is_empty() => Err(
            ModelError::Invalid("shared_with goes with visibility \"shared\" only".into()),
        ),
        _ if input.shared_with.iter().any(|n| n.trim().is_empty()) => Err(ModelError::Invalid(
            "shared_with lists an empty name".into(),
        )),
        _ => Ok(()),
    }
}

/// Refuses an offset that splits a character: a letter and the marks composed on it
/// (an extended grapheme cluster, such as `ệ` written as `e` + U+0323 + U+0302 in NFD)
/// are one character, and only the offsets before and after it are places in the text.
pub fn check_boundary(text: &str, offset: usize) -> Result<(), ModelError> {
    use unicode_segmentation::UnicodeSegmentation;
    let mut at = 0;
    for g in text.graphemes(true) {
        let len = g.chars().count();
        if offset > at && offset < at + len {
            return Err(ModelError::InsideCharacter {
                offset,
                character: g.to_string(),
                from: at,
                to: at + len,
            });
        }
        if at >= offset {
            break;
        }
        at += len;
    }
    Ok(())
}

/// Adds a reply to an annotation.
pub fn add_reply(doc: &mut Automerge, author: &str, text: &str) -> Result<(), ModelError> {
    expect_kind(doc, Kind::Annotation)?;
    check_note_text("a reply", text)?;
    let mut tx = doc.transaction();
    let list = list_or_new(&mut tx, "replies")?;
    let at = tx.length(&list);
    let reply = tx.insert_object(&list, at, ObjType::Map)?;
    tx.put(&reply, "author", author)?;
    tx.put(&reply, "text", text)?;
    tx.put(&reply, "at", now_vietnam())?;
    commit(tx);
    Ok(())
}

/// Marks an annotation resolved (or open again), with who and when.
pub fn set_resolved(doc: &mut Automerge, resolved: bool, by: &str) -> Result<(), ModelError> {
    expect_kind(doc, Kind::Annotation)?;
    let mut tx = doc.transaction();
    tx.put(ROOT, "resolved", resolved)?;
    if resolved {
        tx.put(ROOT, "resolved_by", by)?;
        tx.put(ROOT, "resolved_at", now_vietnam())?;
    } else {
        tx.delete(ROOT, "resolved_by")?;
        tx.delete(ROOT, "resolved_at")?;
    }
    commit(tx);
    Ok(())
}

/// Changes an annotation's text.
pub fn set_annotation_text(doc: &mut Automerge, text: &str) -> Result<(), ModelError> {
    expect_kind(doc, Kind::Annotation)?;
    check_note_text("an annotation", text)?;
    let mut tx = doc.transaction();
    tx.put(ROOT, "text", text)?;
    commit(tx);
    Ok(())
}

/// A signed-in person as annotations know them: users belong to one node, so a
/// sign-in name means a person only together with the node it was made on.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    pub name: &'a str,
    /// The node id the reader is signed in on.
    pub node: &'a str,
}

/// Whether the annotation (its JSON) was written by `reader`: by that name on that node.
pub fn is_annotation_author(annotation: &Json, reader: Reader<'_>) -> bool {
    annotation["author"].as_str() == Some(reader.name)
        && annotation["created_by"].as_str() == Some(reader.node)
}

/// Whether an annotation shared with named people is one: a `shared` note written
/// before names were kept lists none, and is read as it then travelled, by the
/// document's whole audience.
fn shares_with_names(visibility: Option<&str>, shared_with: usize) -> bool {
    visibility == Some("shared") && shared_with > 0
}

/// Whether `reader` (`None` in setup mode, before any user exists) may read an
/// annotation, given its JSON: a private one only its author, one shared with named
/// people its author and those people, all users of the node it was written on (the
/// names are that node's); one for the audience everyone who sees the document.
pub fn may_read_annotation(annotation: &Json, reader: Option<Reader<'_>>) -> bool {
    let Some(reader) = reader else {
        return true;
    };
    let shared_with = annotation["shared_with"].as_array();
    let visibility = annotation["visibility"].as_str();
    let named = shares_with_names(visibility, shared_with.map_or(0, Vec::len));
    if visibility == Some("audience") || (visibility == Some("shared") && !named) {
        return true;
    }
    if is_annotation_author(annotation, reader) {
        return true;
    }
    named
        && annotation["created_by"].as_str() == Some(reader.node)
        && shared_with.is_some_and(|l| l.iter().any(|n| n.as_str() == Some(reader.name)))
}

/// An annotation's JSON with its anchor resolved against the target's current body.
pub fn annotation_json(
    id: &DocId,
    doc: &Automerge,
    target: &Automerge,
) -> Result<Json, ModelError> {
    let mut out = to_json(id, doc)?;
    let anchor = match get_obj(doc, ROOT, "anchor", ObjType::Map) {
        Some(a) => {
            let body = body_obj(target)?;
            let resolve = |key: &str| -> Option<Option<usize>> {
                let Some(text) = get_str(doc, &a, key) else {
                    return Some(None);
                };
                let c = Cursor::try_from(text).ok()?;
                target.get_cursor_position(&body, &c, None).ok().map(Some)
            };
            // The range ends after its last character, and never past the character that
            // followed it; when its start reaches that end, the annotated text is gone.
            match (resolve("start"), resolve("last"), resolve("end")) {
                (Some(Some(start)), Some(None), _) => json!({ "start": start, "end": start }),
                (Some(Some(start)), Some(Some(last)), Some(after)) => {
                    let end = match after {
                        Some(after) => (last + 1).min(after),
                        None => last + 1,
                    };
                    if end > start {
                        json!({ "start": start, "end": end })
                    } else {
                        Json::Null
                    }
                }
                _ => Json::Null,
            }
        }
        None => Json::Null,
    };
    out["anchor"] = anchor;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            kind: Kind::Document,
            unit: "18562".into(),
            audience: vec!["18562".into()],
            created_by: "test".into(),
            created_at: now_vietnam(),
            confidential: false,
        }
    }

    #[test]
    fn an_edit_made_without_seeing_a_deletion_is_a_conflict_on_both_sides() {
        let mut a = create_document(
            &header(),
            &DocumentPatch {
                subject: Some("Kế hoạch".into()),
                body: Some("Điều 1.".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let mut b = a.fork().with_actor(fresh_actor());
        tombstone(&mut a, "chu.tich").unwrap();
        // A deletion with no edit beside it is no conflict.
        assert_eq!(deletion_conflict(&a), Json::Null);
        as_author("can.bo", "node-b", || {
            update_document(
                &mut b,
                &DocumentPatch {
                    subject: Some("Kế hoạch (sửa)".into()),
                    ..Default::default()
                },
            )
        })
        .unwrap();
        a.merge(&mut b.clone()).unwrap();
        b.merge(&mut a.clone()).unwrap();
        let (ca, cb) = (deletion_conflict(&a), deletion_conflict(&b));
        assert_eq!(ca, cb, "the same on both sides");
        let edits = ca["edits"].as_array().unwrap();
        assert_eq!(edits.len(), 1);
        assert_eq!(edits[0]["by"], "can.bo");
        assert_eq!(edits[0]["fields"], json!(["subject"]));
        // Nothing is lost: the edit is in the deleted record.
        assert!(is_deleted(&b));
        assert_eq!(get_str(&b, ROOT, "subject").unwrap(), "Kế hoạch (sửa)");

        // Deleting again, having seen the edit, settles it everywhere.
        let mut settled = a.clone();
        tombstone(&mut settled, "chu.tich").unwrap();
        b.merge(&mut settled.clone()).unwrap();
        assert_eq!(deletion_conflict(&b), Json::Null);
        assert!(is_deleted(&b));
        // So does restoring it, which keeps the edit.
        let mut restored = a.clone();
        undelete(&mut restored).unwrap();
        assert!(!is_deleted(&restored));
        assert_eq!(
            to_json(&DocId::new(), &restored).unwrap()["deletion_conflict"],
            Json::Null
        );
        assert_eq!(
            get_str(&restored, ROOT, "subject").unwrap(),
            "Kế hoạch (sửa)"
        );
    }

    #[test]
    fn offsets_split_no_character_in_either_form() {
        let nfc = "Việt";
        let nfd = "Vie\u{323}\u{302}t";
        for offset in 0..=4 {
            assert!(check_boundary(nfc, offset).is_ok(), "NFC {offset}");
        }
        for ok in [0, 1, 2, 5, 6] {
            assert!(check_boundary(nfd, ok).is_ok(), "NFD {ok}");
        }
        for inside in [3, 4] {
            let err = check_boundary(nfd, inside).unwrap_err();
            assert!(
                matches!(err, ModelError::InsideCharacter { from: 2, to: 5, .. }),
                "{err}"
            );
        }
        // Past the end is the range check's to report, not this one's.
        assert!(check_boundary(nfd, 9).is_ok());
    }

    #[test]
    fn a_note_is_read_by_those_its_visibility_names() {
        let note = |visibility: &str, shared: &[&str]| {
            json!({ "author": "a", "created_by": "n1", "visibility": visibility,
                    "shared_with": shared })
        };
        let on = |name, node| Some(Reader { name, node });
        assert!(may_read_annotation(&note("private", &[]), on("a", "n1")));
        assert!(!may_read_annotation(&note("private", &[]), on("b", "n1")));
        // The same sign-in name on another node is another person.
        assert!(!may_read_annotation(&note("private", &[]), on("a", "n2")));
        assert!(may_read_annotation(&note("shared", &["b"]), on("b", "n1")));
        assert!(!may_read_annotation(&note("shared", &["b"]), on("b", "n2")));
        assert!(!may_read_annotation(&note("shared", &["b"]), on("c", "n1")));
        assert!(may_read_annotation(&note("audience", &[]), on("c", "n2")));
        // A shared note from before names were kept is read by the whole audience.
        assert!(may_read_annotation(&note("shared", &[]), on("c", "n2")));
        // Setup mode, before any user exists: the node's own loopback reads everything.
        assert!(may_read_annotation(&note("private", &[]), None));
    }

    #[test]
    fn control_characters_are_refused_in_text_fields_and_notes() {
        let mut doc = create_document(&header(), &DocumentPatch::default()).unwrap();
        let heads = doc.get_heads();
        let bad = DocumentPatch {
            subject: Some("Về việc\u{0}".into()),
            ..Default::default()
        };
        let err = update_document(&mut doc, &bad).unwrap_err();
        assert!(err.to_string().contains("U+0000"), "{err}");
        assert_eq!(doc.get_heads(), heads, "nothing changed");
        let fine = DocumentPatch {
            body: Some("Điều 1.\n\tKhoản 1.\r\n".into()),
            ..Default::default()
        };
        update_document(&mut doc, &fine).unwrap();
        let mut h = header();
        h.kind = Kind::Annotation;
        let note = NewAnnotation {
            text: "ghi chú\u{1b}[31m".into(),
            anchor: None,
            visibility: Visibility::Audience,
            shared_with: vec![],
            author: None,
        };
        assert!(create_annotation(&h, &DocId::new(), &doc, &note).is_err());
    }

    #[test]
    fn a_document_round_trips_its_decree_fields() {
        let patch = DocumentPatch {
            doc_type: Some("Quyết định".into()),
            number: Some("01".into()),
            imported: true,
            notation: Some("QĐ-UBND".into()),
            subject: Some("Về việc thành lập tổ công tác".into()),
            body: Some("Điều 1. Thành lập.".into()),
            ..Default::default()
        };
        let doc = create_document(&header(), &patch).unwrap();
        let j = to_json(&DocId::new(), &doc).unwrap();
        assert_eq!(j["type"], "Quyết định");
        assert_eq!(j["number"], "01");
        assert_eq!(j["state"], "draft");
        assert_eq!(j["body"], "Điều 1. Thành lập.");
        assert_eq!(j["audience"], json!(["18562"]));
        assert_eq!(j["heads"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_whole_new_body_is_applied_as_a_minimal_edit_that_merges() {
        let mut a = create_document(
            &header(),
            &DocumentPatch {
                body: Some("Một hai ba".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let mut b = a.fork();
        update_document(
            &mut a,
            &DocumentPatch {
                body: Some("Một hai ba bốn".into()),
                ..Default::default()
            },
        )
        .unwrap();
        update_document(
            &mut b,
            &DocumentPatch {
                body: Some("Không một hai ba".into()),
                ..Default::default()
            },
        )
        .unwrap();
        a.merge(&mut b).unwrap();
        assert_eq!(body_text(&a).unwrap(), "Không một hai ba bốn");
    }

    #[test]
    fn a_whole_new_body_unlike_the_old_one_is_applied_without_stalling() {
        let long = |c: char| c.to_string().repeat(50_000);
        let mut doc = create_document(
            &header(),
            &DocumentPatch {
                body: Some(long('a')),
                ..Default::default()
            },
        )
        .unwrap();
        let redraft = format!("{}ư{}", long('b'), long('ệ'));
        update_document(
            &mut doc,
            &DocumentPatch {
                body: Some(redraft.clone()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(body_text(&doc).unwrap(), redraft);
    }

    #[test]
    fn splices_count_unicode_scalar_values_and_refuse_out_of_range() {
        let mut doc = create_document(
            &header(),
            &DocumentPatch {
                body: Some("Việt Nam".into()),
                ..Default::default()
            },
        )
        .unwrap();
        splice_body(&mut doc, 5, 3, "nam").unwrap();
        assert_eq!(body_text(&doc).unwrap(), "Việt nam");
        assert!(matches!(
            splice_body(&mut doc, 9, 0, "x"),
            Err(ModelError::SpliceOutOfRange { len: 8, .. })
        ));
    }

    #[test]
    fn a_batch_of_splices_is_one_change_or_nothing() {
        let mut doc = create_document(
            &header(),
            &DocumentPatch {
                body: Some("abc".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let before = doc.get_heads();
        splice_body_batch(&mut doc, [(3, 0, "dé"), (0, 1, ""), (4, 0, "!")]).unwrap();
        assert_eq!(body_text(&doc).unwrap(), "bcdé!");
        assert_eq!(doc.get_changes(&before).len(), 1);
        let heads = doc.get_heads();
        assert!(splice_body_batch(&mut doc, [(0, 0, "x"), (99, 0, "y")]).is_err());
        assert_eq!(doc.get_heads(), heads);
        assert_eq!(body_text(&doc).unwrap(), "bcdé!");
    }

    #[test]
    fn an_annotation_anchor_follows_edits_before_it() {
        let target = create_document(
            &header(),
            &DocumentPatch {
                body: Some("Xã Thạch Hà".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let tid = DocId::new();
        let mut h = header();
        h.kind = Kind::Annotation;
        let input = NewAnnotation {
            text: "tên xã".into(),
            anchor: Some(Anchor { start: 3, end: 11 }),
            visibility: Visibility::Audience,
            shared_with: vec![],
            author: None,
        };
        let ann = create_annotation(&h, &tid, &target, &input).unwrap();
        let mut target = target;
        splice_body(&mut target, 0, 0, "UBND ").unwrap();
        let j = annotation_json(&DocId::new(), &ann, &target).unwrap();
        assert_eq!(j["anchor"], json!({"start": 8, "end": 16}));
        assert_eq!(j["target"], tid.as_str());
        assert!(!read_header(&ann).unwrap().confidential);
    }

    fn note(target: &Automerge, start: usize, end: usize) -> Automerge {
        let mut h = header();
        h.kind = Kind::Annotation;
        let input = NewAnnotation {
            text: "ghi chú".into(),
            anchor: Some(Anchor { start, end }),
            visibility: Visibility::Audience,
            shared_with: vec![],
            author: None,
        };
        create_annotation(&h, &DocId::new(), target, &input).unwrap()
    }

    #[test]
    fn an_anchor_keeps_to_its_words_and_is_gone_with_them() {
        let mut target = create_document(
            &header(),
            &DocumentPatch {
                body: Some("Xã Thạch Hà, tỉnh Hà Tĩnh".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let name = note(&target, 3, 11);
        let province = note(&target, 13, 25);
        let at_end = note(&target, 25, 25);
        let anchor = |n: &Automerge, t: &Automerge| {
            annotation_json(&DocId::new(), n, t).unwrap()["anchor"].clone()
        };

        // Text typed right after a range stays outside it.
        let len = body_text(&target).unwrap().chars().count();
        splice_body(&mut target, len, 0, " (mới)").unwrap();
        assert_eq!(anchor(&province, &target), json!({"start": 13, "end": 25}));
        assert_eq!(anchor(&at_end, &target), json!({"start": 31, "end": 31}));
        // Text typed inside a range stays inside it.
        splice_body(&mut target, 8, 0, " Nam").unwrap();
        assert_eq!(anchor(&name, &target), json!({"start": 3, "end": 15}));
        // Losing the last character shrinks the range; losing all of it removes it.
        splice_body(&mut target, 14, 1, "").unwrap();
        assert_eq!(anchor(&name, &target), json!({"start": 3, "end": 14}));
        splice_body(&mut target, 3, 11, "").unwrap();
        assert_eq!(body_text(&target).unwrap(), "Xã , tỉnh Hà Tĩnh (mới)");
        assert_eq!(anchor(&name, &target), Json::Null);
        assert_eq!(anchor(&province, &target), json!({"start": 5, "end": 17}));
        // A range at the very start whose text goes, with nothing before it to fall back on.
        let head = note(&target, 0, 4);
        splice_body(&mut target, 0, 4, "").unwrap();
        assert_eq!(anchor(&head, &target), Json::Null);
        let len = body_text(&target).unwrap().chars().count();
        splice_body(&mut target, 0, len, "").unwrap();
        assert_eq!(anchor(&province, &target), Json::Null);
    }

    #[test]
    fn a_note_on_a_secret_document_is_secret_whatever_its_visibility() {
        let secret = create_document(
            &header(),
            &DocumentPatch {
                secrecy: Some("Mật".into()),
                body: Some("nội dung mật".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(read_header(&secret).unwrap().confidential);
        assert!(read_header(&note(&secret, 0, 3)).unwrap().confidential);
        let open = create_document(&header(), &DocumentPatch::default()).unwrap();
        assert!(!read_header(&note(&open, 0, 0)).unwrap().confidential);
    }

    #[test]
    fn a_field_two_people_set_at_once_shows_both_values_alike_everywhere_until_set_again() {
        let mut a = create_document(&header(), &DocumentPatch::default()).unwrap();
        let mut b = a.fork();
        let set = |d: &mut Automerge, subject: &str| {
            update_document(
                d,
                &DocumentPatch {
                    subject: Some(subject.into()),
                    ..Default::default()
                },
            )
            .unwrap()
        };
        set(&mut a, "Về việc tổ chức lễ hội");
        set(&mut b, "Về việc tổ chức Tết Trung thu");
        let mut a2 = a.fork();
        a2.merge(&mut b.fork()).unwrap();
        b.merge(&mut a).unwrap();
        let id = DocId::new();
        let (ja, jb) = (to_json(&id, &a2).unwrap(), to_json(&id, &b).unwrap());
        assert_eq!(ja["conflicts"], jb["conflicts"]);
        let values = ja["conflicts"]["subject"].as_array().unwrap();
        assert_eq!(values.len(), 2);
        assert_eq!(values[0], ja["subject"], "the value shown comes first");
        assert!(values.contains(&json!("Về việc tổ chức lễ hội")));
        // A person picks one.
        set(&mut b, "Về việc tổ chức Tết Trung thu");
        assert_eq!(to_json(&id, &b).unwrap()["conflicts"], json!({}));
    }

    #[test]
    fn the_history_says_who_changed_what_and_an_earlier_version_comes_back_as_a_new_change() {
        let mut doc = as_author("chuyenvien", "node-a", || {
            create_document(
                &header(),
                &DocumentPatch {
                    subject: Some("Dự thảo".into()),
                    body: Some("Điều 1. Bản đầu.".into()),
                    ..Default::default()
                },
            )
        })
        .unwrap();
        let first = doc.get_heads();
        as_author("chutich", "node-b", || {
            update_document(
                &mut doc,
                &DocumentPatch {
                    subject: Some("Về việc kiện toàn".into()),
                    body: Some("Điều 1. Bản sửa.".into()),
                    ..Default::default()
                },
            )
        })
        .unwrap();
        let steps = history(&doc, 0, 10);
        assert_eq!(steps[0]["by"], "chutich");
        assert_eq!(steps[0]["node"], "node-b");
        assert_eq!(steps[0]["fields"], json!(["body", "subject"]));
        assert!(steps[0]["at"].as_str().unwrap().ends_with("+07:00"));
        assert_eq!(steps.last().unwrap()["by"], "chuyenvien");
        assert_eq!(history(&doc, 1, 1)[0], steps[1]);

        let id = DocId::new();
        let heads = parse_heads(&doc, &heads_hex(&first)).unwrap();
        assert_eq!(
            version_json(&id, &doc, &heads).unwrap()["subject"],
            "Dự thảo"
        );
        assert!(parse_heads(&doc, &["00".repeat(32)]).is_err());
        let changes = doc.get_changes(&[]).len();
        restore(&mut doc, &heads).unwrap();
        let now = to_json(&id, &doc).unwrap();
        assert_eq!(now["subject"], "Dự thảo");
        assert_eq!(now["body"], "Điều 1. Bản đầu.");
        // A new change, not a rewrite: every version stays in the history.
        assert_eq!(doc.get_changes(&[]).len(), changes + 1);
    }

    #[test]
    fn ids_must_be_canonical_uuids() {
        assert!(DocId::parse(DocId::new().as_str()).is_ok());
        assert!(DocId::parse("../../etc/passwd").is_err());
        assert!(DocId::parse("0190F5C2-8A1B-7C3D-9E4F-001122334455").is_err());
    }
}
