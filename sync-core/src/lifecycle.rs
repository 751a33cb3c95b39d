//! The lifecycle of an official document (Decree 30/2020/NĐ-CP), as clerks work it.
//!
//! Outgoing: draft → in review ↺ returned → approved → signed → numbered and dated →
//! organisation-signed → registered → dispatched → filed, with corrected, replaced and
//! recalled (frozen) as side branches. Incoming: received → registered (or returned to
//! the sender) → acknowledged → assigned → in progress → completed (on time or late) →
//! filed.
//!
//! A step is an action on the document (`approve`, `number`, …): the action names the
//! states it starts from and the roles that may take it, and it is refused with a
//! message saying why otherwise. Every step appends to the document's `history` who
//! took it, in which role, from which node and when.
//!
//! Numbers come from registers (sổ): one series per issuing body, kind of register and
//! year. Only the unit's registrar node gives numbers; elsewhere `number` leaves the
//! document awaiting its number (a `number_request`), which the registrar fulfils once
//! it has synced. A number is the one after the highest the registrar holds in that
//! series, so it never repeats on one registrar; two registrars (a misconfiguration)
//! can give one number twice, and the `number_key` every numbered document carries lets
//! the store find and show such duplicates on every node.
//!
//! Dispatching an outgoing document widens its audience to the recipient units, so the
//! document itself, with its history and signatures, reaches them; there the registrar
//! creates an incoming document that refers to it. The incoming document is shared with
//! the sender, which is how its receipt and acknowledgement travel back.

use automerge::transaction::{Transactable, Transaction};
use automerge::{Automerge, ObjType, ROOT, ReadDoc, Value};
use ed25519_dalek::SigningKey;
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

use crate::model::{self, DocId, Header, Kind, ModelError};
use crate::signature::{self, SignatureKind, Signer};
use crate::units::UnitCode;
use crate::users::{Actor, UserRole};

/// Whether a document leaves the unit or came into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Outgoing,
    Incoming,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outgoing => "outgoing",
            Direction::Incoming => "incoming",
        }
    }

    /// The state a new document of this direction starts in.
    pub fn initial_state(self) -> &'static str {
        match self {
            Direction::Outgoing => "draft",
            Direction::Incoming => "received",
        }
    }

    /// A document's direction; documents from before directions existed are outgoing.
    pub fn of(doc: &Automerge) -> Direction {
        match model::get_str(doc, ROOT, "direction").as_deref() {
            Some("incoming") => Direction::Incoming,
            _ => Direction::Outgoing,
        }
    }
}

/// The kinds of register a unit keeps per issuing body and year.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    /// Sổ đăng ký văn bản đi.
    Outgoing,
    /// Sổ đăng ký văn bản đến (arrival numbers).
    Incoming,
    /// Secret outgoing documents (văn bản mật), a series of their own.
    Secret,
    /// Secret incoming documents.
    SecretIncoming,
}

impl Series {
    pub const ALL: [Series; 4] = [
        Series::Outgoing,
        Series::Incoming,
        Series::Secret,
        Series::SecretIncoming,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Series::Outgoing => "outgoing",
            Series::Incoming => "incoming",
            Series::Secret => "secret",
            Series::SecretIncoming => "secret-incoming",
        }
    }

    pub fn parse(s: &str) -> Option<Series> {
        Series::ALL.into_iter().find(|x| x.as_str() == s)
    }

    pub fn is_incoming(self) -> bool {
        matches!(self, Series::Incoming | Series::SecretIncoming)
    }

    fn for_document(direction: Direction, secret: bool) -> Series {
        match (direction, secret) {
            (Direction::Outgoing, false) => Series::Outgoing,
            (Direction::Outgoing, true) => Series::Secret,
            (Direction::Incoming, false) => Series::Incoming,
            (Direction::Incoming, true) => Series::SecretIncoming,
        }
    }
}

/// One numbering series: a unit's register of one kind, for one issuing body and year.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesKey {
    pub unit: String,
    pub series: Series,
    pub body: String,
    pub year: i32,
}

impl SeriesKey {
    /// The key as it is kept in documents and registers. The issuing body is folded
    /// (case, diacritics, spacing), so "UBND xã Thạch Hà" and "UBND Xã Thạch  Hà" are one
    /// series.
    pub fn as_string(&self) -> String {
        let body = crate::store::fold_for_search(&self.body)
            .to_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "{}|{}|{}|{}",
            self.unit,
            self.series.as_str(),
            body,
            self.year
        )
    }
}

/// The years a number may be asked for: this one, and the last one while it is open
/// (documents signed on 31 December and numbered after New Year).
fn check_year(year: i32) -> Result<(), LifecycleError> {
    let now = year_now();
    if year == now || year == now - 1 {
        Ok(())
    } else {
        Err(LifecycleError::Invalid(format!(
            "a number is given in this year's register ({now}), or in last year's ({}) \
             while it is open; not in {year}'s",
            now - 1
        )))
    }
}

/// The date a number is given on: today, or the last day of the register's year when
/// it is given later.
fn date_in(year: i32) -> String {
    if year == year_now() {
        today()
    } else {
        format!("{year}-12-31")
    }
}

/// The number after `last` in a series.
pub fn next_number(last: u32) -> Result<u32, ModelError> {
    last.checked_add(1)
        .ok_or_else(|| ModelError::Invalid("the register has no number left this year".into()))
}

/// Numbers below 10 are written with a leading zero (Decree 30, art. 15).
pub fn format_number(n: u32) -> String {
    format!("{n:02}")
}

/// What numbering needs to know from the store.
pub trait Registry {
    /// Has the registrar closed this series' year?
    fn is_closed(&self, key: &SeriesKey) -> Result<bool, String>;
    /// The highest number given in this series that this store holds (0 for none).
    fn last_number(&self, key: &SeriesKey) -> Result<u32, String>;
}

/// Where an action runs: who takes it, on which node, for which unit.
pub struct Context<'a> {
    pub actor: &'a Actor,
    /// The node's id, recorded with every step.
    pub node: &'a str,
    pub unit: &'a UnitCode,
    /// The name of the unit's office, used for the organisation's signature.
    pub unit_name: &'a str,
    /// Whether this node gives the unit's numbers.
    pub registrar: bool,
    /// The office node's key, which applies the organisation's signature.
    pub org_key: &'a SigningKey,
}

/// A lifecycle action as the API receives it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub action: String,
    /// Why (required to return a document).
    pub note: Option<String>,
    /// `dispatch`: the unit codes to send to.
    pub to: Option<Vec<String>>,
    /// `assign`: the lead person or unit, the cooperating ones and the deadline.
    pub lead: Option<String>,
    pub cooperating: Option<Vec<String>>,
    pub deadline: Option<String>,
    /// `number`/`register`: the year of the register (defaults to the current one).
    pub year: Option<i32>,
    /// `correct`/`replace`: the document that corrects or replaces this one.
    pub by_document: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    #[error("{action:?} is not an action on an {direction} document; the actions are: {valid}")]
    UnknownAction {
        action: String,
        direction: &'static str,
        valid: String,
    },
    #[error(
        "cannot {action}: the document is {state}, and {action} applies only to a document \
         that is {from}"
    )]
    Illegal {
        action: String,
        state: String,
        from: String,
    },
    #[error("cannot {action}: it is for a {needs}, and {user} is a {role}")]
    Role {
        action: String,
        user: String,
        role: &'static str,
        needs: String,
    },
    #[error("the document was recalled: it is frozen and takes no more steps")]
    Frozen,
    #[error(
        "the document is awaiting its number from the unit's registrar; it moves on once \
         the registrar has synced (or the clerk withdraws the request: withdraw_number)"
    )]
    AwaitingNumber,
    #[error(
        "secret documents (độ mật) are never dispatched through sync: send this one by the \
         channel for secret documents"
    )]
    SecretDispatch,
    #[error("the {series} register of {year} is closed: no more numbers are given in it")]
    YearClosed { series: &'static str, year: i32 },
    #[error("{0}")]
    Invalid(String),
    #[error("the document belongs to unit {0}: only its own offices take it through its lifecycle")]
    NotOwner(String),
    #[error(
        "cannot {action}: {what} was edited after it was signed; the {signer} signs the \
         edited version first"
    )]
    SignatureOutdated {
        action: String,
        what: &'static str,
        signer: &'static str,
    },
    #[error("the register cannot be read: {0}")]
    Registry(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl From<automerge::AutomergeError> for LifecycleError {
    fn from(e: automerge::AutomergeError) -> LifecycleError {
        LifecycleError::Model(e.into())
    }
}

struct Transition {
    action: &'static str,
    direction: Direction,
    from: &'static [&'static str],
    to: &'static str,
    roles: &'static [UserRole],
}

const ANYONE: &[UserRole] = &UserRole::ALL;
const CLERK: &[UserRole] = &[UserRole::Clerk];
const LEADER: &[UserRole] = &[UserRole::Leader];
/// Once numbered, a document can be corrected, replaced or recalled.
const ISSUED: &[&str] = &[
    "numbered",
    "org_signed",
    "registered",
    "dispatched",
    "filed",
];

const TRANSITIONS: &[Transition] = &[
    Transition {
        action: "submit",
        direction: Direction::Outgoing,
        from: &["draft", "returned"],
        to: "in_review",
        roles: ANYONE,
    },
    Transition {
        action: "return",
        direction: Direction::Outgoing,
        from: &["in_review"],
        to: "returned",
        roles: LEADER,
    },
    Transition {
        action: "approve",
        direction: Direction::Outgoing,
        from: &["in_review"],
        to: "approved",
        roles: LEADER,
    },
    Transition {
        action: "sign",
        direction: Direction::Outgoing,
        // Again once signed: the leader signs an edited version.
        from: &["approved", "signed"],
        to: "signed",
        roles: LEADER,
    },
    // Signing again later, when an edit made elsewhere before the number was asked for
    // arrived after it: the document stays where it is.
    Transition {
        action: "sign",
        direction: Direction::Outgoing,
        from: &["numbered", "org_signed"],
        to: STAY,
        roles: LEADER,
    },
    Transition {
        action: "number",
        direction: Direction::Outgoing,
        from: &["signed"],
        to: "numbered",
        roles: CLERK,
    },
    Transition {
        action: "withdraw_number",
        direction: Direction::Outgoing,
        from: &[AWAITING_NUMBER],
        to: "signed",
        roles: CLERK,
    },
    Transition {
        action: "org_sign",
        direction: Direction::Outgoing,
        from: &["numbered"],
        to: "org_signed",
        roles: CLERK,
    },
    Transition {
        action: "org_sign",
        direction: Direction::Outgoing,
        from: &["org_signed"],
        to: STAY,
        roles: CLERK,
    },
    Transition {
        action: "register",
        direction: Direction::Outgoing,
        from: &["org_signed"],
        to: "registered",
        roles: CLERK,
    },
    Transition {
        action: "dispatch",
        direction: Direction::Outgoing,
        from: &["registered"],
        to: "dispatched",
        roles: CLERK,
    },
    Transition {
        action: "file",
        direction: Direction::Outgoing,
        from: &["registered", "dispatched"],
        to: "filed",
        roles: CLERK,
    },
    Transition {
        action: "correct",
        direction: Direction::Outgoing,
        from: ISSUED,
        to: "corrected",
        roles: LEADER,
    },
    Transition {
        action: "replace",
        direction: Direction::Outgoing,
        from: ISSUED,
        to: "replaced",
        roles: LEADER,
    },
    Transition {
        action: "recall",
        direction: Direction::Outgoing,
        from: &[
            "numbered",
            "org_signed",
            "registered",
            "dispatched",
            "filed",
            "corrected",
        ],
        to: "recalled",
        roles: LEADER,
    },
    Transition {
        action: "register",
        direction: Direction::Incoming,
        from: &["received"],
        to: "registered",
        roles: CLERK,
    },
    Transition {
        action: "withdraw_number",
        direction: Direction::Incoming,
        from: &[AWAITING_NUMBER],
        to: "received",
        roles: CLERK,
    },
    Transition {
        action: "return",
        direction: Direction::Incoming,
        from: &["received"],
        to: "returned_to_sender",
        roles: CLERK,
    },
    Transition {
        action: "acknowledge",
        direction: Direction::Incoming,
        from: &["registered"],
        to: "acknowledged",
        roles: CLERK,
    },
    Transition {
        action: "assign",
        direction: Direction::Incoming,
        from: &["acknowledged"],
        to: "assigned",
        roles: LEADER,
    },
    Transition {
        action: "start",
        direction: Direction::Incoming,
        from: &["assigned"],
        to: "in_progress",
        roles: ANYONE,
    },
    Transition {
        action: "complete",
        direction: Direction::Incoming,
        from: &["in_progress"],
        to: "completed",
        roles: ANYONE,
    },
    Transition {
        action: "file",
        direction: Direction::Incoming,
        from: &["completed"],
        to: "filed",
        roles: CLERK,
    },
];

/// A transition's `to` for a step that leaves the state as it is.
const STAY: &str = "";

/// The state a document waits in until the registrar gives its number.
pub const AWAITING_NUMBER: &str = "awaiting_number";

/// Was `doc` imported (a document numbered on paper before it came into Cabinet)? Only
/// an import carries a number that no register gave.
pub fn is_imported(doc: &Automerge) -> bool {
    model::get_str(doc, ROOT, "origin").as_deref() == Some("import")
}

/// A recalled document takes no edit and no step.
pub fn is_frozen(state: &str) -> bool {
    state == "recalled"
}

/// The states in which an outgoing document's content is fixed: its number is asked for
/// or given. A change is made by correcting or replacing it with another document.
pub const CONTENT_FIXED: &[&str] = &[
    AWAITING_NUMBER,
    "numbered",
    "org_signed",
    "registered",
    "dispatched",
    "filed",
    "corrected",
    "replaced",
    "recalled",
];

/// Is the content of `doc` fixed (an outgoing document being or having been issued)?
pub fn content_fixed(doc: &Automerge) -> bool {
    Direction::of(doc) == Direction::Outgoing
        && model::get_str(doc, ROOT, "state").is_some_and(|s| CONTENT_FIXED.contains(&s.as_str()))
}

fn state_of(doc: &Automerge, direction: Direction) -> String {
    model::get_str(doc, ROOT, "state").unwrap_or_else(|| direction.initial_state().into())
}

fn year_now() -> i32 {
    model::now_vietnam()[..4].parse().unwrap_or(1970)
}

fn today() -> String {
    model::now_vietnam()[..10].to_string()
}

fn is_secret(doc: &Automerge) -> bool {
    model::get_str(doc, ROOT, "secrecy").is_some_and(|s| !s.trim().is_empty())
}

/// The issuing body a document is numbered under: its issuing organisation, or the
/// unit's office.
fn issuing_body(doc: &Automerge, unit_name: &str) -> String {
    model::get_str(doc, ROOT, "issuer")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| unit_name.to_string())
}

/// One line of a document's history.
struct Step<'a> {
    action: &'a str,
    from: &'a str,
    to: &'a str,
    by: &'a str,
    role: &'a str,
    node: &'a str,
    note: Option<&'a str>,
}

fn record_step(tx: &mut Transaction<'_>, step: &Step<'_>) -> Result<(), ModelError> {
    tx.put(ROOT, "state", step.to)?;
    let history = model::list_or_new(tx, "history")?;
    let at = tx.length(&history);
    let m = tx.insert_object(&history, at, ObjType::Map)?;
    tx.put(&m, "action", step.action)?;
    tx.put(&m, "from", step.from)?;
    tx.put(&m, "to", step.to)?;
    tx.put(&m, "by", step.by)?;
    tx.put(&m, "role", step.role)?;
    tx.put(&m, "node", step.node)?;
    tx.put(&m, "at", model::now_vietnam())?;
    if let Some(note) = step.note {
        tx.put(&m, "note", note)?;
    }
    Ok(())
}

/// What an action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The document moved to this state.
    Moved(String),
    /// The number was asked of the registrar; the document waits for it.
    AwaitingNumber,
}

/// Takes a lifecycle action on `doc` (the record `id`), or refuses it and changes
/// nothing.
pub fn apply(
    doc: &mut Automerge,
    id: &DocId,
    request: &ActionRequest,
    ctx: &Context<'_>,
    registry: &dyn Registry,
) -> Result<Outcome, LifecycleError> {
    let header = model::read_header(doc)?;
    if header.kind != Kind::Document {
        return Err(ModelError::WrongKind {
            expected: "document",
            found: header.kind.as_str(),
        }
        .into());
    }
    if header.unit != ctx.unit.as_str() {
        return Err(LifecycleError::NotOwner(header.unit.clone()));
    }
    let direction = Direction::of(doc);
    let state = state_of(doc, direction);
    if is_frozen(&state) {
        return Err(LifecycleError::Frozen);
    }
    let action = request.action.as_str();
    // The transition for this state, or else the first for the action (to say why not).
    let for_action = || {
        TRANSITIONS
            .iter()
            .filter(|t| t.action == action && t.direction == direction)
    };
    let Some(t) = for_action()
        .find(|t| t.from.contains(&state.as_str()))
        .or_else(|| for_action().next())
    else {
        let valid: Vec<&str> = TRANSITIONS
            .iter()
            .filter(|t| t.direction == direction)
            .map(|t| t.action)
            .collect();
        return Err(LifecycleError::UnknownAction {
            action: action.chars().take(40).collect(),
            direction: direction.as_str(),
            valid: valid.join(", "),
        });
    };
    if state == AWAITING_NUMBER && action != "withdraw_number" {
        return Err(LifecycleError::AwaitingNumber);
    }
    if !t.from.contains(&state.as_str()) {
        return Err(LifecycleError::Illegal {
            action: action.into(),
            state: state.clone(),
            from: t
                .from
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(" or "),
        });
    }
    let role = ctx.actor.user.role;
    if !t.roles.contains(&role) {
        return Err(LifecycleError::Role {
            action: action.into(),
            user: ctx.actor.user.name.clone(),
            role: role.as_str(),
            needs: t
                .roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(" or "),
        });
    }
    // What was signed is what goes on: numbering, the organisation's signature,
    // registration and dispatch each need the signatures before them to still cover the
    // content.
    if direction == Direction::Outgoing {
        let needs: &[(SignatureKind, &str, &str)] = match action {
            "number" | "org_sign" => &[(SignatureKind::Personal, "the content", "leader")],
            "register" | "dispatch" => &[
                (SignatureKind::Personal, "the content", "leader"),
                (
                    SignatureKind::Organisation,
                    "the numbered document",
                    "clerk",
                ),
            ],
            _ => &[],
        };
        let checks = signature::verify_all(id, doc)?;
        for (kind, what, signer) in needs {
            let current = checks
                .iter()
                .any(|c| c.kind == kind.as_str() && c.valid && c.covers_current);
            if !current {
                return Err(LifecycleError::SignatureOutdated {
                    action: action.into(),
                    what,
                    signer,
                });
            }
        }
    }
    let note = request
        .note
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    if action == "return" && note.is_none() {
        return Err(LifecycleError::Invalid(
            "say why the document is returned: send a \"note\"".into(),
        ));
    }

    // Checks that need more than the state, all before anything is written.
    let mut numbering = None;
    let mut dispatch_to = Vec::new();
    let numbers = matches!(
        (direction, action),
        (Direction::Outgoing, "number") | (Direction::Incoming, "register")
    );
    match action {
        _ if numbers => {
            // Outgoing numbers go by the issuing body; arrival numbers by the receiving
            // office, whoever sent the document.
            let key = SeriesKey {
                unit: header.unit.clone(),
                series: Series::for_document(direction, is_secret(doc)),
                body: match direction {
                    Direction::Outgoing => issuing_body(doc, ctx.unit_name),
                    Direction::Incoming => ctx.unit_name.to_string(),
                },
                year: request.year.unwrap_or_else(year_now),
            };
            check_year(key.year)?;
            if registry.is_closed(&key).map_err(LifecycleError::Registry)? {
                return Err(LifecycleError::YearClosed {
                    series: key.series.as_str(),
                    year: key.year,
                });
            }
            let next = if ctx.registrar {
                Some(next_number(
                    registry
                        .last_number(&key)
                        .map_err(LifecycleError::Registry)?,
                )?)
            } else {
                None
            };
            numbering = Some((key, next));
        }
        "dispatch" => {
            if is_secret(doc) {
                return Err(LifecycleError::SecretDispatch);
            }
            let to = request.to.as_deref().unwrap_or_default();
            if to.is_empty() {
                return Err(LifecycleError::Invalid(
                    "name the units to send to in \"to\" (unit codes such as \"42\" or \
                     \"18568\")"
                        .into(),
                ));
            }
            for code in to {
                let unit = UnitCode::parse(code.trim())
                    .map_err(|e| LifecycleError::Invalid(e.to_string()))?;
                if unit == *ctx.unit {
                    return Err(LifecycleError::Invalid(
                        "a document is not dispatched to its own unit".into(),
                    ));
                }
                if !dispatch_to.contains(&unit.to_string()) {
                    dispatch_to.push(unit.to_string());
                }
            }
        }
        "assign" => {
            if request.lead.as_deref().is_none_or(|l| l.trim().is_empty()) {
                return Err(LifecycleError::Invalid(
                    "name who leads the handling in \"lead\"".into(),
                ));
            }
            match request.deadline.as_deref() {
                Some(d) if model::is_iso_date(d) => {}
                _ => {
                    return Err(LifecycleError::Invalid(
                        "give a \"deadline\" of the form YYYY-MM-DD".into(),
                    ));
                }
            }
        }
        "correct" | "replace" => {
            if let Some(by) = &request.by_document {
                DocId::parse(by)?;
            }
        }
        _ => {}
    }

    let heads = doc.get_heads();
    let signed_hash = match action {
        "sign" => Some(signature::content_hash(doc, SignatureKind::Personal)?),
        "org_sign" => Some(signature::content_hash(doc, SignatureKind::Organisation)?),
        _ => None,
    };
    let body = issuing_body(doc, ctx.unit_name);
    let on_time = {
        let deadline = model::get_obj(doc, ROOT, "assignment", ObjType::Map)
            .and_then(|a| model::get_str(doc, &a, "deadline"));
        deadline.is_none_or(|d| today() <= d)
    };
    let signatures = signature::count(doc);
    if matches!(action, "sign" | "org_sign") && signatures >= signature::MAX_SIGNATURES {
        return Err(LifecycleError::Invalid(format!(
            "the document already carries {signatures} signatures, the most it may"
        )));
    }
    let mut tx = doc.transaction();
    let user = ctx.actor.user.name.as_str();
    let mut to = if t.to == STAY { state.as_str() } else { t.to };
    match action {
        "sign" => {
            let name = ctx.actor.user.full_name.as_str();
            signature::sign(
                &mut tx,
                id,
                &heads,
                signed_hash.clone().expect("computed for signing"),
                &Signer {
                    kind: SignatureKind::Personal,
                    name,
                    title: &ctx.actor.user.title,
                    by: user,
                    key: &ctx.actor.key,
                },
                ctx.node,
            )?;
        }
        "org_sign" => {
            signature::sign(
                &mut tx,
                id,
                &heads,
                signed_hash.clone().expect("computed for signing"),
                &Signer {
                    kind: SignatureKind::Organisation,
                    name: &body,
                    title: "",
                    by: user,
                    key: ctx.org_key,
                },
                ctx.node,
            )?;
        }
        "dispatch" => {
            let h = match tx.get(ROOT, "header")? {
                Some((Value::Object(ObjType::Map), h)) => h,
                _ => return Err(ModelError::BadHeader("missing").into()),
            };
            let mut audience = header.audience.clone();
            audience.extend(dispatch_to.iter().cloned());
            audience.sort();
            audience.dedup();
            model::put_str_list(&mut tx, &h, "audience", &audience)?;
            let d = tx.put_object(ROOT, "dispatch", ObjType::Map)?;
            model::put_str_list(&mut tx, &d, "to", &dispatch_to)?;
            tx.put(&d, "at", model::now_vietnam())?;
            tx.put(&d, "by", user)?;
            tx.put(&d, "node", ctx.node)?;
        }
        "assign" => {
            let a = tx.put_object(ROOT, "assignment", ObjType::Map)?;
            tx.put(&a, "lead", request.lead.as_deref().unwrap_or("").trim())?;
            model::put_str_list(
                &mut tx,
                &a,
                "cooperating",
                request.cooperating.as_deref().unwrap_or_default(),
            )?;
            tx.put(&a, "deadline", request.deadline.as_deref().unwrap_or(""))?;
            tx.put(&a, "by", user)?;
            tx.put(&a, "at", model::now_vietnam())?;
        }
        "complete" => {
            let c = tx.put_object(ROOT, "completion", ObjType::Map)?;
            tx.put(&c, "at", model::now_vietnam())?;
            tx.put(&c, "on_time", on_time)?;
        }
        "withdraw_number" if tx.get(ROOT, "number_request")?.is_some() => {
            tx.delete(ROOT, "number_request")?;
        }
        "correct" | "replace" => {
            if let Some(by) = &request.by_document {
                let r = tx.put_object(ROOT, "related", ObjType::Map)?;
                tx.put(&r, "relation", t.to)?;
                tx.put(&r, "by", by.as_str())?;
            }
        }
        _ => {}
    }
    let mut outcome = Outcome::Moved(to.to_string());
    if let Some((key, next)) = &numbering {
        match next {
            Some(n) => write_number(&mut tx, key, *n, ctx.node)?,
            None => {
                let r = tx.put_object(ROOT, "number_request", ObjType::Map)?;
                tx.put(&r, "series_key", key.as_string())?;
                tx.put(&r, "series", key.series.as_str())?;
                tx.put(&r, "body", key.body.as_str())?;
                tx.put(&r, "year", key.year as i64)?;
                tx.put(&r, "by", user)?;
                tx.put(&r, "node", ctx.node)?;
                tx.put(&r, "at", model::now_vietnam())?;
                tx.put(&r, "from", state.as_str())?;
                tx.put(&r, "then", t.to)?;
                to = AWAITING_NUMBER;
                outcome = Outcome::AwaitingNumber;
            }
        }
    }
    record_step(
        &mut tx,
        &Step {
            action,
            from: &state,
            to,
            by: user,
            role: role.as_str(),
            node: ctx.node,
            note,
        },
    )?;
    model::commit(tx);
    Ok(outcome)
}

/// Writes a number from the register (and, for an outgoing document, the date it is
/// issued on).
fn write_number(
    tx: &mut Transaction<'_>,
    key: &SeriesKey,
    number: u32,
    node: &str,
) -> Result<(), ModelError> {
    let r = tx.put_object(ROOT, "registration", ObjType::Map)?;
    tx.put(&r, "series_key", key.as_string())?;
    tx.put(&r, "series", key.series.as_str())?;
    tx.put(&r, "body", key.body.as_str())?;
    tx.put(&r, "year", key.year as i64)?;
    tx.put(&r, "number", number as i64)?;
    tx.put(&r, "by", node)?;
    tx.put(&r, "at", model::now_vietnam())?;
    if key.series.is_incoming() {
        tx.put(ROOT, "arrival_number", format_number(number))?;
        tx.put(ROOT, "arrival_date", date_in(key.year))?;
    } else {
        tx.put(ROOT, "number", format_number(number))?;
        tx.put(ROOT, "issued_date", date_in(key.year))?;
    }
    if tx.get(ROOT, "number_request")?.is_some() {
        tx.delete(ROOT, "number_request")?;
    }
    Ok(())
}

/// The number request a document waits on, if any: its series and the state it moves
/// to once numbered.
pub fn pending_request(doc: &Automerge) -> Option<(SeriesKey, String)> {
    let r = model::get_obj(doc, ROOT, "number_request", ObjType::Map)?;
    let unit = model::read_header(doc).ok()?.unit;
    let series = Series::parse(&model::get_str(doc, &r, "series")?)?;
    let year = match doc.get(&r, "year").ok()?? {
        (Value::Scalar(s), _) => s.as_i64()? as i32,
        _ => return None,
    };
    let then = model::get_str(doc, &r, "then")?;
    Some((
        SeriesKey {
            unit,
            series,
            body: model::get_str(doc, &r, "body")?,
            year,
        },
        then,
    ))
}

/// The registrar fulfils a number request: gives `number`, or refuses when the year is
/// closed (the document goes back to where it was, with the reason in its history).
pub fn fulfil_request(
    doc: &mut Automerge,
    number: Option<u32>,
    node: &str,
) -> Result<(), ModelError> {
    let Some((key, then)) = pending_request(doc) else {
        return Ok(());
    };
    if model::get_str(doc, ROOT, "state").as_deref() != Some(AWAITING_NUMBER) {
        return Ok(());
    }
    let r = model::get_obj(doc, ROOT, "number_request", ObjType::Map)
        .ok_or(ModelError::BadHeader("number request"))?;
    let from = model::get_str(doc, &r, "from").unwrap_or_else(|| "signed".into());
    let mut tx = doc.transaction();
    match number {
        Some(n) => {
            write_number(&mut tx, &key, n, node)?;
            record_step(
                &mut tx,
                &Step {
                    action: "assign_number",
                    from: AWAITING_NUMBER,
                    to: &then,
                    by: "registrar",
                    role: "registrar",
                    node,
                    note: None,
                },
            )?;
        }
        None => {
            tx.delete(ROOT, "number_request")?;
            let note = format!(
                "no number was given: the {} register of {} is closed or has no number left",
                key.series.as_str(),
                key.year
            );
            record_step(
                &mut tx,
                &Step {
                    action: "refuse_number",
                    from: AWAITING_NUMBER,
                    to: &from,
                    by: "registrar",
                    role: "registrar",
                    node,
                    note: Some(&note),
                },
            )?;
        }
    }
    model::commit(tx);
    Ok(())
}

/// The id of the incoming document `unit` keeps for the dispatched document `source`:
/// derived from both, so two nodes of the unit that both receive it write one record.
pub fn incoming_id(source: &DocId, unit: &str) -> DocId {
    let mut h = blake3::Hasher::new();
    h.update(b"cabinet/incoming/1\0");
    h.update(source.as_str().as_bytes());
    h.update(b"\0");
    h.update(unit.as_bytes());
    let bytes: [u8; 16] = h.finalize().as_bytes()[..16].try_into().expect("16 bytes");
    let uuid = uuid::Builder::from_custom_bytes(bytes).into_uuid();
    DocId::parse(&uuid.hyphenated().to_string()).expect("a canonical UUID")
}

/// The units a dispatched document was sent to.
pub fn dispatched_to(doc: &Automerge) -> Vec<String> {
    model::get_obj(doc, ROOT, "dispatch", ObjType::Map)
        .and_then(|d| model::get_str_list(doc, &d, "to"))
        .unwrap_or_default()
}

/// The dispatched document an incoming one refers to.
pub fn source_of(doc: &Automerge) -> Option<DocId> {
    let s = model::get_obj(doc, ROOT, "source", ObjType::Map)?;
    DocId::parse(&model::get_str(doc, &s, "document")?).ok()
}

/// The incoming document for `unit` of the dispatched document `source`: in the
/// recipient's queue as received, carrying the sender's number and notation, shared
/// with the sender so its receipt and acknowledgement travel back.
///
/// Its first change is the same wherever it is made (an actor derived from its id, a
/// fixed time, the unit as creator, the dispatch's time as creation time), so two nodes
/// of the unit that both receive the document make one record, not two that clash. Where
/// and when it arrived follows in a change of this node's own.
pub fn create_incoming(
    source_id: &DocId,
    source: &Automerge,
    unit: &str,
    node: &str,
) -> Result<Automerge, ModelError> {
    let id = incoming_id(source_id, unit);
    let sender = model::read_header(source)?;
    let dispatched_at = model::get_obj(source, ROOT, "dispatch", ObjType::Map)
        .and_then(|d| model::get_str(source, &d, "at"))
        .unwrap_or_default();
    let header = Header {
        kind: Kind::Document,
        unit: unit.to_string(),
        audience: {
            let mut a = vec![unit.to_string(), sender.unit.clone()];
            a.sort();
            a.dedup();
            a
        },
        created_by: unit.to_string(),
        created_at: dispatched_at,
        confidential: false,
    };
    let actor: [u8; 16] = blake3::hash(format!("cabinet/incoming-actor/1\0{id}").as_bytes())
        .as_bytes()[..16]
        .try_into()
        .expect("16 bytes");
    let mut doc = Automerge::new().with_actor(automerge::ActorId::from(actor));
    let mut tx = doc.transaction();
    model::write_header(&mut tx, &header)?;
    tx.put_object(ROOT, "body", ObjType::Text)?;
    tx.put(ROOT, "direction", Direction::Incoming.as_str())?;
    tx.put(ROOT, "state", Direction::Incoming.initial_state())?;
    tx.put_object(ROOT, "history", ObjType::List)?;
    tx.put_object(ROOT, "signatures", ObjType::List)?;
    // The sender's fields as they are: what arrived is recorded, not judged again.
    for key in SENDERS_FIELDS {
        if let Some(v) = model::get_str(source, ROOT, key).filter(|v| !v.is_empty()) {
            tx.put(ROOT, *key, v)?;
        }
    }
    let s = tx.put_object(ROOT, "source", ObjType::Map)?;
    tx.put(&s, "document", source_id.as_str())?;
    tx.put(&s, "unit", sender.unit.as_str())?;
    tx.commit_with(automerge::transaction::CommitOptions::default().with_time(0));

    doc.set_actor(model::fresh_actor());
    let mut tx = doc.transaction();
    tx.put(ROOT, "arrived_at", model::now_vietnam())?;
    let history = model::list_or_new(&mut tx, "history")?;
    let m = tx.insert_object(&history, 0, ObjType::Map)?;
    for (k, v) in [
        ("action", "receive"),
        ("from", ""),
        ("to", "received"),
        ("by", "registrar"),
        ("role", "registrar"),
        ("node", node),
    ] {
        tx.put(&m, k, v)?;
    }
    tx.put(&m, "at", model::now_vietnam())?;
    model::commit(tx);
    Ok(doc)
}

/// The fields of a dispatched document its recipients' incoming documents carry.
pub const SENDERS_FIELDS: &[&str] = &[
    "type",
    "number",
    "notation",
    "issuer",
    "place",
    "issued_date",
    "subject",
    "urgency",
    "due_date",
];

/// What only the owning unit writes: the lifecycle of a record.
const LIFECYCLE_KEYS: &[&str] = &[
    "direction",
    "state",
    "history",
    "signatures",
    "number_request",
    "registration",
    "dispatch",
    "source",
    "assignment",
    "completion",
    "related",
    "arrival_number",
    "arrival_date",
    "arrived_at",
    // What places a document in a register, and its deletion.
    "origin",
    "number",
    "issued_date",
    "deleted",
];

/// For a record received from a peer: its signatures verify and none is gone; a peer of
/// another unit (`from_other_unit`) changes no step of its lifecycle, nor its number,
/// date of issue or deletion, nor anything of it once issued or of an incoming document;
/// and an incoming document has the id its unit and source give it and
/// refers only to a document that was dispatched to its unit, as far as the dispatched
/// one held here (`dispatch_of`) shows.
pub fn check_received(
    id: &DocId,
    doc: &Automerge,
    before: &[automerge::ChangeHash],
    from_other_unit: bool,
    dispatch_of: impl FnOnce(&DocId) -> Option<Vec<String>>,
) -> Result<(), String> {
    signature::check_received(id, doc, before)?;
    if from_other_unit && !before.is_empty() {
        let now = model::At::now(doc);
        let then = model::At {
            doc,
            heads: Some(before),
        };
        // Judged at each change's own history: an edit made before the document was
        // issued, though it arrives after, is an honest concurrent edit.
        for change in doc.get_changes(before) {
            let at = model::At {
                doc,
                heads: Some(change.deps()),
            };
            let incoming = at.str(&ROOT, "direction").as_deref() == Some("incoming");
            let issued = at
                .str(&ROOT, "state")
                .is_some_and(|s| CONTENT_FIXED.contains(&s.as_str()));
            if incoming || issued {
                return Err(if incoming {
                    "an incoming document belongs to the unit that received it: another unit \
                     does not change it"
                        .into()
                } else {
                    "the document is issued: another unit does not change it (its owner \
                     corrects or replaces it)"
                        .into()
                });
            }
        }
        for key in LIFECYCLE_KEYS {
            if now.json(&ROOT, (*key).into()) != then.json(&ROOT, (*key).into()) {
                return Err(format!(
                    "only the owning unit takes a record through its lifecycle: the change \
                     alters its {key}"
                ));
            }
        }
    }
    if let Some(src) = source_of(doc) {
        let unit = model::read_header(doc).map_err(|e| e.to_string())?.unit;
        if *id != incoming_id(&src, &unit) {
            return Err(format!(
                "an incoming document of unit {unit} for {src} must have the id {}",
                incoming_id(&src, &unit)
            ));
        }
        if let Some(to) = dispatch_of(&src)
            && !to.contains(&unit)
        {
            return Err(format!(
                "unit {unit} acknowledges document {src}, which was not dispatched to it"
            ));
        }
    }
    Ok(())
}

/// A map (or a list of maps) at a root key as JSON; anything else there reads as null
/// (a list as empty).
fn map_at(doc: &Automerge, key: &str) -> Json {
    match model::At::now(doc).json(&ROOT, key.into()) {
        m @ Json::Object(_) => m,
        _ => Json::Null,
    }
}

fn maps_at(doc: &Automerge, key: &str) -> Json {
    match model::At::now(doc).json(&ROOT, key.into()) {
        Json::Array(items) => Json::Array(items.into_iter().filter(Json::is_object).collect()),
        _ => json!([]),
    }
}

/// The lifecycle part of a document's JSON.
pub fn json_fields(header: &Header, doc: &Automerge, out: &mut Map<String, Json>) {
    let direction = Direction::of(doc);
    out.insert("direction".into(), json!(direction.as_str()));
    out.insert("history".into(), maps_at(doc, "history"));
    out.insert("signatures".into(), signature::summary(doc));
    for key in [
        "number_request",
        "registration",
        "dispatch",
        "source",
        "assignment",
        "completion",
        "related",
    ] {
        out.insert(key.into(), map_at(doc, key));
    }
    for key in ["arrival_number", "arrival_date", "arrived_at"] {
        out.insert(key.into(), json!(model::get_str(doc, ROOT, key)));
    }
    let numbering = numbering(header, doc).map(|(key, number)| {
        json!({
            "key": key.as_string(),
            "series": key.series.as_str(),
            "body": key.body,
            "year": key.year,
            "number": number,
        })
    });
    // What two documents holding one number share: one indexed lookup finds duplicates.
    out.insert(
        "number_key".into(),
        json!(numbering.as_ref().map(|n| format!(
            "{}|{}",
            n["key"].as_str().unwrap_or(""),
            n["number"]
        ))),
    );
    out.insert("numbering".into(), numbering.unwrap_or(Json::Null));
}

/// The register series and number a document holds: the ones a registrar gave, or,
/// for an outgoing document numbered elsewhere (an import of paper documents), its
/// number in the series of its issuer and year of issue. Incoming documents carry the
/// sender's number, so only their arrival number counts. The unit is always the
/// record's own, so no other unit's record can take a place in this unit's registers.
pub fn numbering(header: &Header, doc: &Automerge) -> Option<(SeriesKey, u32)> {
    let unit = header.unit.clone();
    if let Some(r) = model::get_obj(doc, ROOT, "registration", ObjType::Map) {
        let int = |k: &str| match doc.get(&r, k).ok()?? {
            (Value::Scalar(s), _) => s.as_i64(),
            _ => None,
        };
        let key = SeriesKey {
            unit,
            series: Series::parse(&model::get_str(doc, &r, "series")?)?,
            body: model::get_str(doc, &r, "body")?,
            year: i32::try_from(int("year")?).ok()?,
        };
        return Some((key, u32::try_from(int("number")?).ok()?));
    }
    if Direction::of(doc) == Direction::Incoming || !is_imported(doc) {
        return None;
    }
    let number: u32 = model::get_str(doc, ROOT, "number")?.trim().parse().ok()?;
    let year: i32 = model::get_str(doc, ROOT, "issued_date")?
        .get(..4)?
        .parse()
        .ok()?;
    let body = model::get_str(doc, ROOT, "issuer")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| UnitCode::parse(&header.unit).ok().map(|u| u.name()))?;
    let key = SeriesKey {
        unit,
        series: Series::for_document(Direction::Outgoing, is_secret(doc)),
        body,
        year,
    };
    Some((key, number))
}

/// Creates the record that closes a register's year.
pub fn create_closing(
    header: &Header,
    key: &SeriesKey,
    last_number: u32,
    by: &str,
) -> Result<Automerge, ModelError> {
    let mut doc = Automerge::new().with_actor(model::fresh_actor());
    let mut tx = doc.transaction();
    model::write_header(&mut tx, header)?;
    tx.put(ROOT, "series_key", key.as_string())?;
    tx.put(ROOT, "series", key.series.as_str())?;
    tx.put(ROOT, "body", key.body.as_str())?;
    tx.put(ROOT, "year", key.year as i64)?;
    tx.put(ROOT, "last_number", last_number as i64)?;
    tx.put(ROOT, "closed_by", by)?;
    tx.put(ROOT, "closed_at", model::now_vietnam())?;
    model::commit(tx);
    Ok(doc)
}

/// The JSON of a register record.
pub fn register_json_fields(doc: &Automerge, out: &mut Map<String, Json>) {
    if let Json::Object(m) = model::At::now(doc).map(&ROOT) {
        for (k, v) in m {
            if k != "header" {
                out.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DocumentPatch, Header};
    use crate::users::Directory;

    struct Book {
        last: u32,
        closed: bool,
    }

    impl Registry for Book {
        fn is_closed(&self, _: &SeriesKey) -> Result<bool, String> {
            Ok(self.closed)
        }
        fn last_number(&self, _: &SeriesKey) -> Result<u32, String> {
            Ok(self.last)
        }
    }

    const OPEN: Book = Book {
        last: 0,
        closed: false,
    };

    fn actor(role: UserRole) -> Actor {
        let mut dir = Directory::in_memory().unwrap();
        let name = role.as_str();
        dir.add(
            name,
            role,
            &format!("Người {name}"),
            "Chủ tịch",
            "mật khẩu 1",
        )
        .unwrap();
        dir.login(name, "mật khẩu 1").unwrap().1
    }

    fn draft(secrecy: Option<&str>) -> (DocId, Automerge) {
        let header = Header {
            kind: Kind::Document,
            unit: "18562".into(),
            audience: vec!["18562".into()],
            created_by: "node".into(),
            created_at: model::now_vietnam(),
            confidential: secrecy.is_some(),
        };
        let doc = model::create_document(
            &header,
            &DocumentPatch {
                doc_type: Some("Quyết định".into()),
                notation: Some("QĐ-UBND".into()),
                subject: Some("Về việc kiện toàn tổ công tác".into()),
                body: Some("Điều 1. Kiện toàn tổ công tác.".into()),
                secrecy: secrecy.map(str::to_string),
                ..Default::default()
            },
        )
        .unwrap();
        (DocId::new(), doc)
    }

    struct Office {
        unit: UnitCode,
        key: SigningKey,
        registrar: bool,
    }

    impl Office {
        fn new(registrar: bool) -> Office {
            Office {
                unit: UnitCode::parse("18562").unwrap(),
                key: SigningKey::from_bytes(&[7; 32]),
                registrar,
            }
        }

        fn act(
            &self,
            doc: &mut Automerge,
            id: &DocId,
            who: &Actor,
            request: ActionRequest,
            book: &Book,
        ) -> Result<Outcome, LifecycleError> {
            let ctx = Context {
                actor: who,
                node: "node-a",
                unit: &self.unit,
                unit_name: "UBND xã Thạch Hà",
                registrar: self.registrar,
                org_key: &self.key,
            };
            apply(doc, id, &request, &ctx, book)
        }

        fn step(&self, doc: &mut Automerge, id: &DocId, who: &Actor, action: &str) {
            self.act(doc, id, who, action_named(action), &OPEN)
                .unwrap_or_else(|e| panic!("{action}: {e}"));
        }
    }

    fn action_named(action: &str) -> ActionRequest {
        ActionRequest {
            action: action.into(),
            ..Default::default()
        }
    }

    fn field(doc: &Automerge, key: &str) -> Option<String> {
        model::get_str(doc, ROOT, key)
    }

    #[test]
    fn an_outgoing_document_goes_from_draft_to_dispatched_with_signatures_that_hold() {
        let office = Office::new(true);
        let (clerk, leader, member) = (
            actor(UserRole::Clerk),
            actor(UserRole::Leader),
            actor(UserRole::Member),
        );
        let (id, mut doc) = draft(None);
        office.step(&mut doc, &id, &member, "submit");
        office.step(&mut doc, &id, &leader, "approve");
        office.step(&mut doc, &id, &leader, "sign");
        let numbered = office
            .act(
                &mut doc,
                &id,
                &clerk,
                action_named("number"),
                &Book {
                    last: 6,
                    closed: false,
                },
            )
            .unwrap();
        assert_eq!(numbered, Outcome::Moved("numbered".into()));
        assert_eq!(field(&doc, "number").as_deref(), Some("07"));
        assert_eq!(field(&doc, "issued_date").unwrap(), today());
        office.step(&mut doc, &id, &clerk, "org_sign");
        office.step(&mut doc, &id, &clerk, "register");
        office
            .act(
                &mut doc,
                &id,
                &clerk,
                ActionRequest {
                    action: "dispatch".into(),
                    to: Some(vec!["42".into(), "18568".into()]),
                    ..Default::default()
                },
                &OPEN,
            )
            .unwrap();
        assert_eq!(field(&doc, "state").as_deref(), Some("dispatched"));
        let header = model::read_header(&doc).unwrap();
        assert_eq!(header.audience, vec!["18562", "18568", "42"]);
        assert_eq!(dispatched_to(&doc), vec!["42", "18568"]);

        // Who, when, from which node: every step.
        let json = model::to_json(&id, &doc).unwrap();
        let steps: Vec<&str> = json["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["action"].as_str().unwrap())
            .collect();
        assert_eq!(
            steps,
            [
                "submit", "approve", "sign", "number", "org_sign", "register", "dispatch"
            ]
        );
        let sign = &json["history"][2];
        assert_eq!(sign["by"], "leader");
        assert_eq!(sign["role"], "leader");
        assert_eq!(sign["node"], "node-a");
        assert!(sign["at"].as_str().unwrap().ends_with("+07:00"));

        // The leader signed the content before numbering, the organisation after it.
        let checks = signature::verify_all(&id, &doc).unwrap();
        assert_eq!(checks.len(), 2);
        assert!(
            checks.iter().all(|c| c.valid && c.covers_current),
            "{checks:?}"
        );
        assert_eq!(checks[0].kind, "personal");
        assert_eq!(checks[0].public_key, leader.user.public_key);
        assert_eq!(checks[1].kind, "organisation");
        assert_ne!(checks[0].content_hash, checks[1].content_hash);
        // Numbering after the personal signature does not touch what it covers; a number
        // changed afterwards would show on the organisation's.
        assert!(checks[0].signed_at.ends_with("+07:00"));

        // An edit afterwards: both hold for the version they signed, not the current one.
        model::splice_body(&mut doc, 0, 0, "Sửa: ").unwrap();
        let checks = signature::verify_all(&id, &doc).unwrap();
        assert!(
            checks.iter().all(|c| c.valid && !c.covers_current),
            "{checks:?}"
        );
        assert!(
            checks[0]
                .problem
                .as_deref()
                .unwrap()
                .contains("edited after signing")
        );
    }

    #[test]
    fn steps_out_of_order_or_role_are_refused_with_the_reason_and_change_nothing() {
        let office = Office::new(true);
        let (clerk, leader, member) = (
            actor(UserRole::Clerk),
            actor(UserRole::Leader),
            actor(UserRole::Member),
        );
        let (id, mut doc) = draft(None);
        let heads = doc.get_heads();
        let err = office
            .act(&mut doc, &id, &leader, action_named("sign"), &OPEN)
            .unwrap_err();
        assert!(matches!(err, LifecycleError::Illegal { .. }));
        assert_eq!(
            err.to_string(),
            "cannot sign: the document is draft, and sign applies only to a document that \
             is approved or signed"
        );
        office.step(&mut doc, &id, &member, "submit");
        let err = office
            .act(&mut doc, &id, &member, action_named("approve"), &OPEN)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot approve: it is for a leader, and member is a member"
        );
        let err = office
            .act(&mut doc, &id, &leader, action_named("return"), &OPEN)
            .unwrap_err();
        assert!(err.to_string().contains("say why"));
        assert!(matches!(
            office.act(&mut doc, &id, &clerk, action_named("publish"), &OPEN),
            Err(LifecycleError::UnknownAction { .. })
        ));
        let steps = doc.get_changes(&heads).len();
        assert_eq!(steps, 1, "only the submit was written");
        office
            .act(
                &mut doc,
                &id,
                &leader,
                ActionRequest {
                    action: "return".into(),
                    note: Some("Bổ sung căn cứ pháp lý".into()),
                    ..Default::default()
                },
                &OPEN,
            )
            .unwrap();
        assert_eq!(field(&doc, "state").as_deref(), Some("returned"));
        office.step(&mut doc, &id, &member, "submit");
    }

    fn signed(office: &Office, secrecy: Option<&str>) -> (DocId, Automerge) {
        let leader = actor(UserRole::Leader);
        let (id, mut doc) = draft(secrecy);
        office.step(&mut doc, &id, &leader, "submit");
        office.step(&mut doc, &id, &leader, "approve");
        office.step(&mut doc, &id, &leader, "sign");
        (id, doc)
    }

    #[test]
    fn away_from_the_registrar_a_number_is_asked_for_and_given_once_synced() {
        let laptop = Office::new(false);
        let clerk = actor(UserRole::Clerk);
        let (id, mut doc) = signed(&laptop, None);
        let outcome = laptop
            .act(&mut doc, &id, &clerk, action_named("number"), &OPEN)
            .unwrap();
        assert_eq!(outcome, Outcome::AwaitingNumber);
        assert_eq!(field(&doc, "state").as_deref(), Some(AWAITING_NUMBER));
        assert_eq!(field(&doc, "number"), None);
        let err = laptop
            .act(&mut doc, &id, &clerk, action_named("org_sign"), &OPEN)
            .unwrap_err();
        assert!(matches!(err, LifecycleError::AwaitingNumber));
        // Withdrawn and asked again.
        let mut withdrawn = doc.fork();
        laptop.step(&mut withdrawn, &id, &clerk, "withdraw_number");
        assert_eq!(field(&withdrawn, "state").as_deref(), Some("signed"));
        assert!(pending_request(&withdrawn).is_none());
        let (key, then) = pending_request(&doc).unwrap();
        assert_eq!(key.series, Series::Outgoing);
        assert_eq!(key.body, "UBND xã Thạch Hà");
        assert_eq!(then, "numbered");

        // The registrar, once it holds the request.
        fulfil_request(&mut doc, Some(3), "registrar-node").unwrap();
        assert_eq!(field(&doc, "state").as_deref(), Some("numbered"));
        assert_eq!(field(&doc, "number").as_deref(), Some("03"));
        assert!(pending_request(&doc).is_none());
        let json = model::to_json(&id, &doc).unwrap();
        assert_eq!(json["registration"]["number"], 3);
        assert_eq!(
            json["history"].as_array().unwrap().last().unwrap()["node"],
            "registrar-node"
        );
        assert!(json["number_key"].as_str().unwrap().ends_with("|3"));
        // Fulfilling again does nothing.
        let heads = doc.get_heads();
        fulfil_request(&mut doc, Some(4), "registrar-node").unwrap();
        assert_eq!(doc.get_heads(), heads);
    }

    #[test]
    fn a_closed_year_gives_no_number_here_nor_at_the_registrar() {
        let registrar = Office::new(true);
        let clerk = actor(UserRole::Clerk);
        let (id, mut doc) = signed(&registrar, None);
        let closed = Book {
            last: 40,
            closed: true,
        };
        let heads = doc.get_heads();
        let err = registrar
            .act(&mut doc, &id, &clerk, action_named("number"), &closed)
            .unwrap_err();
        assert!(matches!(err, LifecycleError::YearClosed { .. }), "{err}");
        assert_eq!(doc.get_heads(), heads);

        // A request queued elsewhere before the closing is refused when it arrives.
        let laptop = Office::new(false);
        laptop
            .act(&mut doc, &id, &clerk, action_named("number"), &OPEN)
            .unwrap();
        fulfil_request(&mut doc, None, "registrar-node").unwrap();
        assert_eq!(field(&doc, "state").as_deref(), Some("signed"));
        assert_eq!(field(&doc, "number"), None);
        let json = model::to_json(&id, &doc).unwrap();
        let last = json["history"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["action"], "refuse_number");
        assert!(last["note"].as_str().unwrap().contains("closed"));
    }

    #[test]
    fn secret_documents_have_their_own_series_and_are_never_dispatched() {
        let office = Office::new(true);
        let clerk = actor(UserRole::Clerk);
        let (id, mut doc) = signed(&office, Some("Mật"));
        office.step(&mut doc, &id, &clerk, "number");
        let json = model::to_json(&id, &doc).unwrap();
        assert_eq!(json["registration"]["series"], "secret");
        office.step(&mut doc, &id, &clerk, "org_sign");
        office.step(&mut doc, &id, &clerk, "register");
        let err = office
            .act(
                &mut doc,
                &id,
                &clerk,
                ActionRequest {
                    action: "dispatch".into(),
                    to: Some(vec!["42".into()]),
                    ..Default::default()
                },
                &OPEN,
            )
            .unwrap_err();
        assert!(matches!(err, LifecycleError::SecretDispatch));
        assert!(err.to_string().contains("never dispatched through sync"));
        assert_eq!(model::read_header(&doc).unwrap().audience, vec!["18562"]);
    }

    #[test]
    fn a_recalled_document_is_frozen() {
        let office = Office::new(true);
        let (clerk, leader) = (actor(UserRole::Clerk), actor(UserRole::Leader));
        let (id, mut doc) = signed(&office, None);
        office.step(&mut doc, &id, &clerk, "number");
        office.step(&mut doc, &id, &leader, "recall");
        assert!(matches!(
            office.act(&mut doc, &id, &clerk, action_named("org_sign"), &OPEN),
            Err(LifecycleError::Frozen)
        ));
        let edit = model::update_document(
            &mut doc,
            &DocumentPatch {
                subject: Some("khác".into()),
                ..Default::default()
            },
        );
        assert!(edit.unwrap_err().to_string().contains("frozen"));
    }

    #[test]
    fn an_incoming_document_is_registered_acknowledged_assigned_and_completed() {
        let office = Office::new(true);
        let (clerk, leader, member) = (
            actor(UserRole::Clerk),
            actor(UserRole::Leader),
            actor(UserRole::Member),
        );
        let (source_id, mut source) = signed(&office, None);
        office.step(&mut source, &source_id, &clerk, "number");
        let b = Office {
            unit: UnitCode::parse("18568").unwrap(),
            ..Office::new(true)
        };
        let id = incoming_id(&source_id, "18568");
        assert_eq!(id, incoming_id(&source_id, "18568"));
        // Two nodes of the unit receiving it make one record: the same first change.
        let mut one = create_incoming(&source_id, &source, "18568", "node-b").unwrap();
        let mut two = create_incoming(&source_id, &source, "18568", "laptop-b").unwrap();
        let first = |d: &Automerge| d.get_changes(&[])[0].hash();
        assert_eq!(first(&one), first(&two));
        one.merge(&mut two).unwrap();
        assert_eq!(
            model::read_header(&one).unwrap(),
            model::read_header(&two).unwrap()
        );
        assert_eq!(
            model::to_json(&id, &one).unwrap()["history"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_ne!(id, incoming_id(&source_id, "42"));
        let mut doc = create_incoming(&source_id, &source, "18568", "node-b").unwrap();
        assert_eq!(field(&doc, "state").as_deref(), Some("received"));
        assert_eq!(field(&doc, "number"), field(&source, "number"));
        assert_eq!(source_of(&doc), Some(source_id.clone()));
        assert_eq!(
            model::read_header(&doc).unwrap().audience,
            vec!["18562", "18568"]
        );
        b.step(&mut doc, &id, &clerk, "register");
        assert_eq!(field(&doc, "arrival_number").as_deref(), Some("01"));
        assert_eq!(field(&doc, "number"), field(&source, "number"));
        b.step(&mut doc, &id, &clerk, "acknowledge");
        let err = b
            .act(&mut doc, &id, &leader, action_named("assign"), &OPEN)
            .unwrap_err();
        assert!(err.to_string().contains("lead"));
        b.act(
            &mut doc,
            &id,
            &leader,
            ActionRequest {
                action: "assign".into(),
                lead: Some("Văn phòng HĐND và UBND".into()),
                deadline: Some("2999-12-31".into()),
                ..Default::default()
            },
            &OPEN,
        )
        .unwrap();
        b.step(&mut doc, &id, &member, "start");
        b.step(&mut doc, &id, &member, "complete");
        let json = model::to_json(&id, &doc).unwrap();
        assert_eq!(json["state"], "completed");
        assert_eq!(json["completion"]["on_time"], true);
        assert_eq!(json["direction"], "incoming");
        // The sender's number on an incoming document is not one of this unit's.
        assert!(
            json["number_key"]
                .as_str()
                .unwrap()
                .starts_with("18568|incoming|ubnd xa thach ha|"),
            "{}",
            json["number_key"]
        );
    }

    #[test]
    fn a_received_change_with_a_bad_or_missing_signature_or_a_forged_receipt_is_refused() {
        let office = Office::new(true);
        let (id, doc) = signed(&office, None);
        let nothing = |_: &DocId| None;
        check_received(&id, &doc, &[], false, nothing).unwrap();
        // The same signature moved to another record does not verify.
        assert!(check_received(&DocId::new(), &doc, &[], false, nothing).is_err());

        // Any signed field altered.
        let mut forged = doc.fork();
        let list = model::get_obj(&forged, ROOT, "signatures", ObjType::List).unwrap();
        let entry = match forged.get(&list, 0).unwrap().unwrap() {
            (Value::Object(ObjType::Map), m) => m,
            _ => unreachable!(),
        };
        let mut tx = forged.transaction();
        tx.put(&entry, "name", "Người khác").unwrap();
        tx.commit();
        let err = check_received(&id, &forged, &doc.get_heads(), false, nothing).unwrap_err();
        assert!(err.contains("removes or alters"), "{err}");
        // Arriving as a new record, the altered signature does not verify.
        let err = check_received(&id, &forged, &[], false, nothing).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");

        // A signature removed.
        let mut removed = doc.fork();
        let mut tx = removed.transaction();
        tx.delete(ROOT, "signatures").unwrap();
        tx.commit();
        let err = check_received(&id, &removed, &doc.get_heads(), false, nothing).unwrap_err();
        assert!(err.contains("removes or alters"), "{err}");

        // A receipt from a unit the document was not dispatched to.
        let receipt = create_incoming(&id, &doc, "18568", "node-b").unwrap();
        let rid = incoming_id(&id, "18568");
        let err =
            check_received(&rid, &receipt, &[], false, |_| Some(vec!["42".into()])).unwrap_err();
        assert!(err.contains("not dispatched to it"), "{err}");
        check_received(&rid, &receipt, &[], false, |_| Some(vec!["18568".into()])).unwrap();

        // The same receipt under another id: refused, so one unit has one receipt.
        let err = check_received(&DocId::new(), &receipt, &[], false, nothing).unwrap_err();
        assert!(err.contains("must have the id"), "{err}");

        // A node of another unit may edit a shared document, never its lifecycle.
        let mut stepped = doc.fork();
        let mut tx = stepped.transaction();
        tx.put(ROOT, "state", "recalled").unwrap();
        tx.commit();
        let err = check_received(&id, &stepped, &doc.get_heads(), true, nothing).unwrap_err();
        assert!(err.contains("alters its state"), "{err}");
        check_received(&id, &stepped, &doc.get_heads(), false, nothing).unwrap();
        let mut edited = doc.fork();
        model::splice_body(&mut edited, 0, 0, "Góp ý: ").unwrap();
        check_received(&id, &edited, &doc.get_heads(), true, nothing).unwrap();
        // Once numbered it is issued: another unit changes nothing of it, and its own
        // offices edit it no more.
        let mut issued = doc.fork();
        office.step(&mut issued, &id, &actor(UserRole::Clerk), "number");
        let numbered = issued.get_heads();
        let mut edited = issued.fork();
        model::splice_body(&mut edited, 0, 0, "Góp ý: ").unwrap();
        let err = check_received(&id, &edited, &numbered, true, nothing).unwrap_err();
        assert!(err.contains("is issued"), "{err}");
        let err = model::update_document(
            &mut issued,
            &DocumentPatch {
                subject: Some("khác".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("content is fixed"), "{err}");
    }
}
