//! The clerks' office work on a node: lifecycle actions, registers and their printing,
//! and the registrar's duties (giving numbers others asked for, receiving documents
//! dispatched to the unit).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};
use sync_core::lifecycle::{self, ActionRequest, Context, LifecycleError, Series, SeriesKey};
use sync_core::model::{self, DocId, Header, Kind};
use sync_core::net::SharedStore;
use sync_core::service;
use sync_core::signature;
use sync_core::store::{Store, StoreError};
use sync_core::units::UnitCode;
use sync_core::users::{Actor, UserRole};
use tracing::{info, warn};

use crate::api::{ApiError, ApiResult, AppState, parse_body, parse_id, with_store, with_store_as};

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> ApiError {
        let status = match &e {
            LifecycleError::Role { .. } | LifecycleError::NotOwner(_) => StatusCode::FORBIDDEN,
            LifecycleError::UnknownAction { .. } | LifecycleError::Invalid(_) => {
                StatusCode::BAD_REQUEST
            }
            LifecycleError::Model(_) => StatusCode::BAD_REQUEST,
            LifecycleError::Registry(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::CONFLICT,
        };
        ApiError(status, e.to_string())
    }
}

/// The signed-in user, or the reason there is none.
pub fn signed_in(actor: Option<Extension<Arc<Actor>>>) -> ApiResult<Arc<Actor>> {
    actor.map(|Extension(a)| a).ok_or_else(|| {
        ApiError(
            StatusCode::UNAUTHORIZED,
            "this needs a signed-in user (documents move through their lifecycle in a \
             person's name): create users with `cabinet-node user add NAME --role ROLE` and \
             sign in with POST /api/v1/login"
                .into(),
        )
    })
}

/// What the API adds to a stored document's JSON when one document is asked for: its
/// signatures checked, duplicates of its number, receipts of a dispatched document, the
/// dispatched document an incoming one refers to, and whether it is overdue.
pub fn enrich(store: &mut Store, id: &DocId, value: &mut JsonValue) -> ApiResult<()> {
    let doc = store
        .get(id)?
        .ok_or_else(|| ApiError::not_found(id.as_str()))?;
    value["signatures"] = json!(signature::verify_all(id, doc)?);
    crate::attachments::mark_states(store, value);
    let duplicates = duplicates(store, id, value)?;
    value["duplicates"] = json!(duplicates.iter().map(DocId::as_str).collect::<Vec<_>>());
    if let Some(to) = value["dispatch"]["to"].as_array().cloned() {
        let receipts = receipts(store, id, &to)?;
        // Only the sender holds every recipient's receipt; a recipient sees its own.
        if value["unit"].as_str() == Some(store.info().unit.as_str()) {
            let acknowledged = receipts
                .iter()
                .filter(|r| r["acknowledged"] == true)
                .count();
            value["received_by_all"] = json!(receipts.len() == to.len());
            value["acknowledged_by_all"] = json!(acknowledged == to.len());
        }
        value["receipts"] = json!(receipts);
    }
    if let Some(source) = value["source"]["document"]
        .as_str()
        .and_then(|s| DocId::parse(s).ok())
    {
        value["source_document"] = match store.get(&source)? {
            Some(src) => {
                let mut s = json!({
                    "id": source.as_str(),
                    "held": true,
                    "signatures": signature::verify_all(&source, src)?,
                });
                let j = model::to_json(&source, src)?;
                for key in lifecycle::SENDERS_FIELDS
                    .iter()
                    .chain(&["unit", "state", "heads", "body"])
                {
                    s[key] = j[key].clone();
                }
                s
            }
            None => json!({ "id": source.as_str(), "held": false }),
        };
    }
    let deadline = value["assignment"]["deadline"].as_str().map(str::to_string);
    let open = matches!(value["state"].as_str(), Some("assigned" | "in_progress"));
    if let Some(deadline) = deadline {
        let today = &model::now_vietnam()[..10];
        value["overdue"] = json!(open && today > deadline.as_str());
    }
    Ok(())
}

/// The other documents holding the number that the document `id` (stored as `json`)
/// holds.
fn duplicates(store: &Store, id: &DocId, json: &JsonValue) -> ApiResult<Vec<DocId>> {
    Ok(match json["number_key"].as_str() {
        Some(key) => store.same_number(id, key)?,
        None => Vec::new(),
    })
}

/// Marks who stands behind each checked signature of a document's JSON (and of the
/// dispatched document an incoming one refers to), as far as this node can tell:
/// `signer_known` is true for an organisation's signature made with the key of a node
/// the roster lists for the document's unit (or this node, for its own unit), and for a
/// personal one made with the key of a user of this node; false for an organisation's
/// signature with any other key; null for a person this node does not know.
// TODO: a person's key is known only on the node where the user was created; other
// units cannot tell a leader's real key from any other until the unit publishes its
// users' keys under its organisation's signature.
pub fn mark_signers(state: &AppState, value: &mut JsonValue) {
    let own = state.net.id().to_string();
    let own_unit = state.office.unit.as_str();
    let users: Vec<String> = state
        .users
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .list()
        .map(|u| u.into_iter().map(|u| u.public_key).collect())
        .unwrap_or_default();
    let mark = |doc: &mut JsonValue| {
        let unit = doc["unit"].as_str().unwrap_or("").to_string();
        let Some(list) = doc["signatures"].as_array_mut() else {
            return;
        };
        for sig in list {
            let key = sig["public_key"].as_str().unwrap_or("").to_string();
            let known = match sig["kind"].as_str() {
                Some("organisation") => json!(
                    (key == own && unit == own_unit)
                        || state.net.with_trust(|t| t.member(&key).is_some_and(|m| m
                            .unit
                            .as_str()
                            == unit
                            && m.role == sync_core::policy::Role::Node))
                ),
                _ if users.contains(&key) => json!(true),
                _ => JsonValue::Null,
            };
            sig["signer_known"] = known;
        }
    };
    mark(value);
    if value["source_document"]["held"] == true {
        mark(&mut value["source_document"]);
    }
}

/// The receipts of the dispatched document `id`: one per recipient unit in `to`, the
/// incoming document with the id that unit and this document give it.
fn receipts(store: &Store, id: &DocId, to: &[JsonValue]) -> ApiResult<Vec<JsonValue>> {
    Ok(store
        .incoming_of(id)?
        .into_iter()
        .filter(|r| {
            let unit = r["unit"].as_str().unwrap_or("");
            to.contains(&r["unit"])
                && r["id"].as_str() == Some(lifecycle::incoming_id(id, unit).as_str())
        })
        .map(|r| receipt(&r))
        .collect())
}

/// A recipient's receipt as the sender sees it.
fn receipt(incoming: &JsonValue) -> JsonValue {
    let history = incoming["history"].as_array().cloned().unwrap_or_default();
    let ack = history.iter().find(|s| s["action"] == "acknowledge");
    json!({
        "unit": incoming["unit"],
        "id": incoming["id"],
        "state": incoming["state"],
        "arrived_at": incoming["arrived_at"],
        "arrival_number": incoming["arrival_number"],
        "acknowledged": ack.is_some(),
        "acknowledged_at": ack.map(|s| s["at"].clone()),
        "acknowledged_by": ack.map(|s| s["by"].clone()),
    })
}

/// `POST /api/v1/documents/{id}/actions`: one lifecycle step.
pub async fn act(
    State(state): State<AppState>,
    Path(id): Path<String>,
    actor: Option<Extension<Arc<Actor>>>,
    body: Bytes,
) -> ApiResult<Json<JsonValue>> {
    let id = parse_id(&id)?;
    let actor = signed_in(actor)?;
    let request: ActionRequest = parse_body(&body)?;
    let node = state.net.id().to_string();
    let office = state.office.clone();
    let value = with_store_as(&state, Some(actor.clone()), move |s| {
        // What the policy columns say is enough to refuse early; the document itself is
        // read once, for the step.
        match s.meta(&id)? {
            Some(m) if m.header.kind == Kind::Document && m.deleted => {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    "this document was deleted; it takes no more steps".into(),
                ));
            }
            Some(m) if m.header.kind == Kind::Document => {}
            _ => return Err(ApiError::not_found(id.as_str())),
        }
        let unit = office.unit.clone();
        // The official name, the same on every node of the unit whatever each calls itself.
        let unit_name = unit.name();
        let mut doc = s
            .take(&id)?
            .ok_or_else(|| ApiError::not_found(id.as_str()))?;
        let before = doc.get_heads();
        let ctx = Context {
            actor: &actor,
            node: &node,
            unit: &unit,
            unit_name: &unit_name,
            registrar: office.registrar,
            org_key: &office.org_key,
        };
        // On a refusal the copy is dropped and the stored one reloads: nothing changed.
        match lifecycle::apply(&mut doc, &id, &request, &ctx, s) {
            Ok(outcome) => {
                s.put(&id, doc, &before)?;
                info!(record = %id, action = %request.action, user = %actor.user.name,
                    outcome = ?outcome, "lifecycle step");
            }
            Err(e) => {
                warn!(record = %id, action = %request.action, user = %actor.user.name,
                    reason = %e, "lifecycle step refused");
                return Err(e.into());
            }
        }
        crate::api::document_json(s, &id)
    })
    .await?;
    let mut value = value;
    mark_signers(&state, &mut value);
    Ok(Json(value))
}

/// `GET /api/v1/documents/{id}/signatures`: every signature, checked.
pub async fn signatures(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let id = parse_id(&id)?;
    let mut value = with_store(&state, move |s| {
        let doc = crate::api::document_json(s, &id)?;
        Ok(json!({
            "unit": doc["unit"],
            "id": id.as_str(),
            "heads": doc["heads"],
            "content_hash": signature::content_hash(
                s.get(&id)?.expect("just read"),
                signature::SignatureKind::Organisation,
            )?,
            "signatures": doc["signatures"],
        }))
    })
    .await?;
    mark_signers(&state, &mut value);
    Ok(Json(value))
}

/// How this node takes part in the office's work.
pub struct Office {
    /// The unit this node serves.
    pub unit: UnitCode,
    /// Whether this node gives the unit's numbers.
    pub registrar: bool,
    /// The node's key, which applies the organisation's signature.
    pub org_key: ed25519_dalek::SigningKey,
}

/// The register a request names. Without a `body`, the one series of that kind and year
/// this node holds; with none, the unit's own (under its official name); with several,
/// the request must say which.
fn series_key(s: &Store, series: &str, year: i32, body: Option<&str>) -> ApiResult<SeriesKey> {
    let kind = Series::parse(series).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{series:?} is not a register: use outgoing, incoming, secret or secret-incoming"
        ))
    })?;
    if !(2000..=9999).contains(&year) {
        return Err(ApiError::bad_request(format!(
            "{year} is not a year of a register"
        )));
    }
    let unit = s.info().unit.clone();
    let body = match body.map(str::trim).filter(|b| !b.is_empty()) {
        Some(b) => b.to_string(),
        None => {
            let held: Vec<String> = s
                .register_series(&unit)?
                .into_iter()
                .filter(|r| r.series == kind.as_str() && r.year == i64::from(year))
                .map(|r| r.body)
                .collect();
            match held.as_slice() {
                [] => UnitCode::parse(&unit).map_or_else(|_| s.info().name.clone(), |u| u.name()),
                [one] => one.clone(),
                several => {
                    return Err(ApiError::bad_request(format!(
                        "this unit keeps {series} registers of {year} for several issuing \
                         bodies ({}): name one with ?body= (or \"body\" when closing)",
                        several.join("; ")
                    )));
                }
            }
        }
    };
    Ok(SeriesKey {
        unit,
        series: kind,
        body,
        year,
    })
}

/// `GET /api/v1/registers`: the unit's register series this node holds.
pub async fn list_registers(State(state): State<AppState>) -> ApiResult<Json<JsonValue>> {
    let value = with_store(&state, move |s| {
        let unit = s.info().unit.clone();
        let registers: Vec<JsonValue> = s
            .register_series(&unit)?
            .into_iter()
            .map(|r| {
                json!({
                    "series": r.series,
                    "body": r.body,
                    "year": r.year,
                    "numbers": r.numbers,
                    "closed": r.closed,
                })
            })
            .collect();
        Ok(json!({ "registers": registers }))
    })
    .await?;
    Ok(Json(value))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterQuery {
    body: Option<String>,
    format: Option<String>,
}

/// One printed row of a register, in the columns of Decree 30 Appendix IV.
struct Row {
    cells: Vec<String>,
}

const OUTGOING_COLUMNS: &[&str] = &[
    "Số, ký hiệu văn bản",
    "Ngày tháng văn bản",
    "Tên loại và trích yếu nội dung văn bản",
    "Người ký",
    "Nơi nhận văn bản",
    "Đơn vị, người nhận bản lưu",
    "Số lượng bản",
    "Ngày chuyển",
    "Ký nhận",
    "Ghi chú",
];

const INCOMING_COLUMNS: &[&str] = &[
    "Ngày đến",
    "Số đến",
    "Tác giả",
    "Số, ký hiệu văn bản",
    "Ngày tháng văn bản",
    "Tên loại và trích yếu nội dung",
    "Đơn vị hoặc người nhận",
    "Ngày chuyển",
    "Ký nhận",
    "Ghi chú",
];

fn text(v: &JsonValue) -> String {
    v.as_str().unwrap_or("").to_string()
}

/// `2026-12-04` as printed in a register: `04/12/2026`.
fn date_vn(v: &JsonValue) -> String {
    let s = text(v);
    // A time stamp prints as its date.
    let s = s.get(..10).unwrap_or(&s).to_string();
    match (s.get(0..4), s.get(5..7), s.get(8..10)) {
        (Some(y), Some(m), Some(d)) => format!("{d}/{m}/{y}"),
        _ => s,
    }
}

fn number_notation(d: &JsonValue, number: &JsonValue) -> String {
    match (text(number), text(&d["notation"])) {
        (n, no) if no.is_empty() => n,
        (n, no) => format!("{n}/{no}"),
    }
}

fn type_subject(d: &JsonValue) -> String {
    [text(&d["type"]), text(&d["subject"])]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" – ")
}

fn notes(d: &JsonValue, duplicates: &[DocId]) -> String {
    let mut out = Vec::new();
    if !duplicates.is_empty() {
        out.push(format!(
            "TRÙNG SỐ (duplicate number) với {}",
            duplicates
                .iter()
                .map(DocId::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    match d["state"].as_str() {
        Some("recalled") => out.push("Đã thu hồi (recalled)".into()),
        Some("replaced") => out.push("Đã thay thế (replaced)".into()),
        Some("corrected") => out.push("Đã đính chính (corrected)".into()),
        _ => {}
    }
    if d["deleted"] == true {
        out.push("Đã xoá (deleted)".into());
    }
    out.join("; ")
}

fn rows(s: &mut Store, key: &SeriesKey) -> ApiResult<Vec<(JsonValue, Row)>> {
    let mut out = Vec::new();
    for d in s.register_entries(key)? {
        let id = DocId::parse(d["id"].as_str().unwrap_or(""))?;
        let duplicates = duplicates(s, &id, &d)?;
        let cells = if key.series.is_incoming() {
            vec![
                date_vn(&d["arrival_date"]),
                text(&d["arrival_number"]),
                text(&d["issuer"]),
                number_notation(&d, &d["number"]),
                date_vn(&d["issued_date"]),
                type_subject(&d),
                text(&d["assignment"]["lead"]),
                date_vn(&d["assignment"]["at"]),
                String::new(),
                notes(&d, &duplicates),
            ]
        } else {
            let signer = d["signatures"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["kind"] == "personal"))
                .map(|s| {
                    format!("{} {}", text(&s["title"]), text(&s["name"]))
                        .trim()
                        .to_string()
                })
                .unwrap_or_else(|| text(&d["signer"]));
            let mut recipients: Vec<String> = d["recipients"]
                .as_array()
                .map(|r| r.iter().map(text).collect())
                .unwrap_or_default();
            if recipients.is_empty() {
                recipients = d["dispatch"]["to"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .map(|u| {
                                let code = text(u);
                                UnitCode::parse(&code).map(|u| u.name()).unwrap_or(code)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
            }
            let to = d["dispatch"]["to"].as_array().cloned().unwrap_or_default();
            let acknowledged: Vec<String> = receipts(s, &id, &to)?
                .iter()
                .filter(|r| r["acknowledged"] == true)
                .map(|r| {
                    let code = text(&r["unit"]);
                    UnitCode::parse(&code).map_or(code, |u| u.name())
                })
                .collect();
            vec![
                number_notation(&d, &d["number"]),
                date_vn(&d["issued_date"]),
                type_subject(&d),
                signer,
                recipients.join("; "),
                "VT".into(),
                String::new(),
                date_vn(&d["dispatch"]["at"]),
                acknowledged.join(", "),
                notes(&d, &duplicates),
            ]
        };
        out.push((d, Row { cells }));
    }
    Ok(out)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn register_title(key: &SeriesKey) -> String {
    let kind = match key.series {
        Series::Outgoing => "SỔ ĐĂNG KÝ VĂN BẢN ĐI",
        Series::Incoming => "SỔ ĐĂNG KÝ VĂN BẢN ĐẾN",
        Series::Secret => "SỔ ĐĂNG KÝ VĂN BẢN ĐI (MẬT)",
        Series::SecretIncoming => "SỔ ĐĂNG KÝ VĂN BẢN ĐẾN (MẬT)",
    };
    format!("{kind} – {} – năm {}", key.body, key.year)
}

/// `GET /api/v1/registers/{series}/{year}[?body=…][&format=json|csv|html]`.
pub async fn show_register(
    State(state): State<AppState>,
    Path((series, year)): Path<(String, i32)>,
    query: Result<Query<RegisterQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let format = query.format.clone().unwrap_or_else(|| "json".into());
    if !matches!(format.as_str(), "json" | "csv" | "html") {
        return Err(ApiError::bad_request(
            "format is json (the default), csv or html",
        ));
    }
    let (key, rows, closed) = with_store(&state, move |s| {
        let key = series_key(s, &series, year, query.body.as_deref())?;
        let rows = rows(s, &key)?;
        let closed = s.is_closed(&key)?;
        Ok((key, rows, closed))
    })
    .await?;
    let columns = if key.series.is_incoming() {
        INCOMING_COLUMNS
    } else {
        OUTGOING_COLUMNS
    };
    Ok(match format.as_str() {
        "csv" => {
            // With a byte order mark, so spreadsheets read the Vietnamese text as UTF-8.
            let mut w = csv::Writer::from_writer(b"\xEF\xBB\xBF".to_vec());
            let csv_err =
                |e: csv::Error| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            w.write_record(columns).map_err(csv_err)?;
            for (_, row) in &rows {
                // A cell a spreadsheet would take for a formula is written as text.
                let cells = row.cells.iter().map(|c| {
                    if c.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                        format!("'{c}")
                    } else {
                        c.clone()
                    }
                });
                w.write_record(cells).map_err(csv_err)?;
            }
            let bytes = w
                .into_inner()
                .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], bytes).into_response()
        }
        "html" => {
            let mut html = format!(
                "<!doctype html><html lang=\"vi\"><meta charset=\"utf-8\"><title>{t}</title>\
                 <style>body{{font-family:'Times New Roman',serif}}table{{border-collapse:\
                 collapse;width:100%}}td,th{{border:1px solid #000;padding:4px;vertical-align:\
                 top}}.dup{{background:#fdd}}@media print{{@page{{size:A4 landscape}}}}</style>\
                 <h1>{t}</h1>{c}<table><thead><tr>",
                t = escape(&register_title(&key)),
                c = if closed {
                    "<p>Đã khoá sổ (closed).</p>"
                } else {
                    ""
                },
            );
            for c in columns {
                html.push_str(&format!("<th>{}</th>", escape(c)));
            }
            html.push_str("</tr></thead><tbody>");
            for (d, row) in &rows {
                let dup = row.cells.last().is_some_and(|n| n.contains("TRÙNG SỐ"));
                html.push_str(&format!(
                    "<tr data-id=\"{}\"{}>",
                    escape(d["id"].as_str().unwrap_or("")),
                    if dup { " class=\"dup\"" } else { "" }
                ));
                for cell in &row.cells {
                    html.push_str(&format!("<td>{}</td>", escape(cell)));
                }
                html.push_str("</tr>");
            }
            html.push_str("</tbody></table></html>");
            ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
        }
        _ => Json(json!({
            "series": key.series.as_str(),
            "body": key.body,
            "year": key.year,
            "closed": closed,
            "columns": columns,
            "entries": rows.iter().map(|(d, row)| json!({
                "id": d["id"],
                "number": d["numbering"]["number"],
                "duplicate": row.cells.last().is_some_and(|n| n.contains("TRÙNG SỐ")),
                "cells": row.cells,
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CloseRequest {
    body: Option<String>,
}

/// `POST /api/v1/registers/{series}/{year}/close`: the registrar closes a year; no more
/// numbers are given in it, on any node of the unit that has synced the closing.
pub async fn close_register(
    State(state): State<AppState>,
    Path((series, year)): Path<(String, i32)>,
    actor: Option<Extension<Arc<Actor>>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<JsonValue>)> {
    let actor = signed_in(actor)?;
    let request: CloseRequest = if body.is_empty() {
        CloseRequest::default()
    } else {
        parse_body(&body)?
    };
    if actor.user.role != UserRole::Clerk {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "closing a register is for a clerk, and {} is a {}",
                actor.user.name,
                actor.user.role.as_str()
            ),
        ));
    }
    if !state.office.registrar {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "only the unit's registrar node closes a register (serve it with --registrar)".into(),
        ));
    }
    let node = state.net.id().to_string();
    let value = with_store_as(&state, Some(actor.clone()), move |s| {
        let key = series_key(s, &series, year, request.body.as_deref())?;
        if s.is_closed(&key)? {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!(
                    "the {} register of {year} is already closed",
                    key.series.as_str()
                ),
            ));
        }
        let last = s.last_number(&key)?;
        let unit = s.info().unit.clone();
        let header = Header {
            kind: Kind::Register,
            unit: unit.clone(),
            audience: vec![unit],
            created_by: node.clone(),
            created_at: model::now_vietnam(),
            confidential: true,
        };
        let doc = lifecycle::create_closing(&header, &key, last, &actor.user.name)?;
        let id = DocId::new();
        s.put(&id, doc, &[])?;
        info!(series = key.series.as_str(), year, last, user = %actor.user.name,
            "register closed");
        Ok(json!({
            "id": id.as_str(),
            "series": key.series.as_str(),
            "body": key.body,
            "year": year,
            "last_number": last,
            "closed": true,
        }))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(value)))
}

/// One round of the registrar's duties: numbers for documents waiting on them, and an
/// incoming document for each document dispatched to the unit that has none yet. A
/// document that cannot be handled is logged and skipped; the others go on.
pub fn registrar_round(store: &mut Store, node: &str) -> Result<(), StoreError> {
    let unit = store.info().unit.clone();
    for id in store.awaiting_number(&unit)? {
        if let Err(e) = give_number(store, &id, node) {
            warn!(record = %id, error = %e, "cannot give the number asked for");
        }
    }
    for source in store.dispatched_to(&unit)? {
        if let Err(e) = receive(store, &source, &unit, node) {
            warn!(record = %source, error = %e, "cannot receive a dispatched document");
        }
    }
    Ok(())
}

fn give_number(store: &mut Store, id: &DocId, node: &str) -> Result<(), StoreError> {
    let Some(doc) = store.get(id)? else {
        return Ok(());
    };
    let Some((key, _)) = lifecycle::pending_request(doc) else {
        return Ok(());
    };
    // A closed year, or one with no number left: the request is refused.
    let number = if store.is_closed(&key)? {
        None
    } else {
        lifecycle::next_number(store.last_number(&key)?).ok()
    };
    store.modify(id, |d| lifecycle::fulfil_request(d, number, node))?;
    match number {
        Some(n) => info!(record = %id, series = key.series.as_str(), year = key.year,
            number = n, "number given"),
        None => warn!(record = %id, series = key.series.as_str(), year = key.year,
            "number refused: the year is closed or has no number left"),
    }
    Ok(())
}

fn receive(store: &mut Store, source: &DocId, unit: &str, node: &str) -> Result<(), StoreError> {
    let incoming = lifecycle::incoming_id(source, unit);
    if store.contains(&incoming)? {
        return Ok(());
    }
    let Some(src) = store.get(source)? else {
        return Ok(());
    };
    if model::is_deleted(src) {
        return Ok(());
    }
    let doc = lifecycle::create_incoming(source, src, unit, node)?;
    store.put(&incoming, doc, &[])?;
    info!(record = %incoming, source = %source, "document received");
    Ok(())
}

/// Runs the registrar's duties whenever the store changes (and every few seconds).
pub async fn registrar_loop(store: SharedStore, node: String) {
    let mut changed = service::lock(&store).subscribe();
    loop {
        let s = store.clone();
        let n = node.clone();
        let result = tokio::task::spawn_blocking(move || {
            model::as_author("registrar", &n, || {
                registrar_round(&mut service::lock(&s), &n)
            })
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "registrar round failed"),
            Err(e) => warn!(error = %e, "registrar round panicked"),
        }
        // Our own writes change the store too; they settle after one more round.
        let _ = tokio::time::timeout(Duration::from_secs(5), changed.changed()).await;
        changed.borrow_and_update();
    }
}
