//! A document's attachments over HTTP: upload, list, download and removal.
//!
//! An upload streams to a temporary file while it is hashed, and is listed on the
//! document only once the file is stored under its hash. A download is served only when
//! every byte of the file is here and verified; until then the answer says how far the
//! transfer has come.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};
use sync_core::blobs::{self, BlobError, BlobState, Blobs};
use sync_core::model::{self, Attachment, DocId};
use sync_core::store::Store;
use sync_core::users::Actor;

use crate::api::{
    ApiError, ApiResult, AppState, document_json, parse_id, refuse_foreign_incoming,
    stored_document, with_store, with_store_as,
};

/// The longest file name kept.
const MAX_NAME_CHARS: usize = 255;

/// Characters a file name may not hold: controls, the marks that reverse or isolate text
/// direction (which make `a\u{202E}fdp.exe` read as `aexe.pdf`), and the replacement
/// character that stands for bytes that were not UTF-8.
fn misleading(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        || c == char::REPLACEMENT_CHARACTER
}

/// Adds `status` (`complete`, `partial` or `missing`) and `received` (verified bytes
/// here) to each attachment a document's JSON lists.
pub fn mark_states(store: &Store, value: &mut JsonValue) {
    let Some(list) = value["attachments"].as_array_mut() else {
        return;
    };
    for a in list {
        let Some(hash) = a["hash"].as_str().and_then(|h| blobs::parse_hash(h).ok()) else {
            continue;
        };
        let size = a["size"].as_u64().unwrap_or(0);
        let state = store
            .blobs()
            .map_or(BlobState::Missing, |b| match b.state(&hash) {
                // A file with the right hash has the right size; one listed with another
                // size (a faulty entry) is never complete.
                BlobState::Complete if b.complete_size(&hash) != Some(size) => BlobState::Missing,
                s => s,
            });
        a["status"] = json!(state.as_str());
        a["received"] = json!(match state {
            BlobState::Complete => size,
            BlobState::Partial(n) => n.min(size),
            BlobState::Missing => 0,
        });
    }
}

/// What may be done to a document's list of files by this node: it exists, is not
/// deleted, and its content is not fixed by the lifecycle; an incoming document takes
/// files only from the unit that received it.
fn check_editable(store: &mut Store, id: &DocId) -> ApiResult<JsonValue> {
    let current = files_of(store, id)?;
    if current["deleted"] == true {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "this document was deleted; its attachments cannot change".into(),
        ));
    }
    refuse_foreign_incoming(&current, &store.info().unit)?;
    let doc = store
        .get(id)?
        .ok_or_else(|| ApiError::not_found(id.as_str()))?;
    if sync_core::lifecycle::content_fixed(doc) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "the document's content is fixed (being issued, or issued): its attachments \
             change only through a correction or a replacement"
                .into(),
        ));
    }
    Ok(current)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    name: Option<String>,
}

fn blobs_of(state: &AppState) -> Arc<Blobs> {
    state.net.blobs().clone()
}

fn storage_error(e: BlobError) -> ApiError {
    match e {
        BlobError::TooLarge => ApiError(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        other => ApiError(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

/// `POST /api/v1/documents/{id}/attachments?name=NAME` with the file as the body and its
/// type as `Content-Type`.
pub async fn upload(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<UploadQuery>,
    actor: Option<Extension<Arc<Actor>>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let actor = actor.map(|Extension(a)| a);
    let id = parse_id(&id)?;
    let name = query.name.unwrap_or_default().trim().to_string();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(misleading) {
        return Err(ApiError::bad_request(format!(
            "name the file with ?name=… in UTF-8 (1 to {MAX_NAME_CHARS} characters, no \
             control or text-direction characters), such as ?name=to-trinh.pdf"
        )));
    }
    // A body announced as too large is refused before any of it is read.
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > blobs::MAX_ATTACHMENT_BYTES) {
        return Err(storage_error(BlobError::TooLarge));
    }
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or_default().trim().to_string())
        .unwrap_or_else(|| "application/octet-stream".into());
    if media_type.len() > 127 || media_type.parse::<mime::Mime>().is_err() {
        return Err(ApiError::bad_request(
            "Content-Type must be the file's media type, such as application/pdf",
        ));
    }
    // Refused before a byte is stored.
    let check = id.clone();
    with_store(&state, move |s| check_editable(s, &check).map(|_| ())).await?;

    let blobs = blobs_of(&state);
    let mut upload = blobs.upload().map_err(storage_error)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("upload cut short: {e}")))?;
        tokio::task::block_in_place(|| upload.write(&chunk)).map_err(storage_error)?;
    }
    if upload.size() == 0 {
        return Err(ApiError::bad_request(
            "the file is empty: send its bytes as the body",
        ));
    }
    let (hash, size) = tokio::task::block_in_place(|| upload.finish()).map_err(storage_error)?;
    let attachment = Attachment {
        hash: hash.to_hex().to_string(),
        name,
        size,
        media_type,
        added_by: actor.as_ref().map(|a| a.user.name.clone()),
        added_at: None,
        added_on: Some(state.net.id().to_string()),
    };
    tracing::info!(document = %id, hash = %attachment.hash, size, "attachment stored");
    let value = with_store_as(&state, actor, move |s| {
        let current = check_editable(s, &id)?;
        if let Ok(listed) = listed(&current, &attachment.hash) {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!(
                    "the document lists this file already, as {}",
                    listed["name"]
                ),
            ));
        }
        s.modify(&id, |doc| model::add_attachment(doc, &attachment))?;
        s.attachment_held(&attachment.hash, attachment.size)?;
        let unit = s.info().unit.clone();
        s.attachment_source(&attachment.hash, attachment.size, &unit)?;
        let document = document_json(s, &id)?;
        let entry = listed(&document, &attachment.hash)?;
        Ok(json!({ "attachment": entry, "document": document }))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(value)).into_response())
}

/// `GET /api/v1/documents/{id}/attachments`.
pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let id = parse_id(&id)?;
    let value = with_store(&state, move |s| {
        let document = files_of(s, &id)?;
        Ok(json!({ "attachments": document["attachments"] }))
    })
    .await?;
    Ok(Json(value))
}

/// The document as stored, its files marked with what this node holds of them.
fn files_of(store: &Store, id: &DocId) -> ApiResult<JsonValue> {
    let mut document = stored_document(store, id)?;
    mark_states(store, &mut document);
    Ok(document)
}

fn listed(document: &JsonValue, hash: &str) -> ApiResult<JsonValue> {
    document["attachments"]
        .as_array()
        .and_then(|l| l.iter().find(|a| a["hash"] == hash))
        .cloned()
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("the document lists no attachment {hash}"),
            )
        })
}

/// `GET /api/v1/documents/{id}/attachments/{hash}`: the file, once it is here whole.
pub async fn download(
    State(state): State<AppState>,
    Path((id, hash)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let parsed = blobs::parse_hash(&hash).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let hex = parsed.to_hex().to_string();
    let entry = with_store(&state, move |s| listed(&files_of(s, &id)?, &hex)).await?;
    if entry["status"] != "complete" {
        let size = entry["size"].as_u64().unwrap_or(0);
        let received = entry["received"].as_u64().unwrap_or(0);
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "the attachment is not here whole yet: {received} of {size} bytes received \
                 and verified; it is served once every byte is"
            ),
        ));
    }
    let path = blobs_of(&state).path(&parsed);
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let name = entry["name"].as_str().unwrap_or("attachment");
    let disposition = format!(
        "attachment; filename*=UTF-8''{}",
        utf8_percent_encode(name, NON_ALPHANUMERIC)
    );
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(entry["media_type"].as_str().unwrap_or_default()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(entry["size"].as_u64().unwrap_or(0)),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        "x-content-blake3",
        HeaderValue::from_str(parsed.to_hex().as_str()).expect("hex"),
    );
    Ok(response)
}

/// `DELETE /api/v1/documents/{id}/attachments/{hash}`: the document no longer lists the
/// file (it stays stored while any document lists it).
pub async fn remove(
    State(state): State<AppState>,
    Path((id, hash)): Path<(String, String)>,
    actor: Option<Extension<Arc<Actor>>>,
) -> ApiResult<Json<JsonValue>> {
    let actor = actor.map(|Extension(a)| a);
    let id = parse_id(&id)?;
    let hash = blobs::parse_hash(&hash)
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .to_hex()
        .to_string();
    let value = with_store_as(&state, actor, move |s| {
        let current = check_editable(s, &id)?;
        listed(&current, &hash)?;
        s.modify(&id, |doc| model::remove_attachment(doc, &hash))?;
        document_json(s, &id)
    })
    .await?;
    Ok(Json(value))
}
