//! The node's HTTP API under `/api/v1` (JSON), and the clerks' web UI at `/`.
//!
//! Every write returns only after the store transaction holding it has committed. Every
//! error is a 4xx or 5xx status with `{ "error": "…" }` that says what to do.
//!
//! Until the first user exists the node is in setup mode: it answers requests from this
//! machine (loopback) only, without credentials. Once a user exists, every request but
//! sign-in, the status and the web UI's page carries `Authorization: Bearer TOKEN` from
//! `POST /api/v1/login`, from the LAN or from this machine alike.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value as JsonValue, json};
use sync_core::model::{self, DocId, DocumentPatch, Header, Kind, NewAnnotation, Visibility};
use sync_core::net::{Net, SharedStore};
use sync_core::service;
use sync_core::store::{Store, StoreError};
use sync_core::units::UnitCode;
use sync_core::users::{Actor, Directory, UserError};

use crate::attachments;
use crate::office::{self, Office};

/// The most records one listing page returns.
const MAX_PAGE: usize = 10_000;

/// Request bodies larger than this are refused before parsing.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub store: SharedStore,
    pub net: Arc<Net>,
    /// The node's users and sign-in tokens.
    pub users: Arc<std::sync::Mutex<Directory>>,
    pub office: Arc<Office>,
    /// Sign-ins hashing at once: each takes tens of MiB and a core for a moment, so a
    /// flood of them waits here instead of exhausting the node.
    pub login_slots: Arc<tokio::sync::Semaphore>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/v1/status", get(status))
        .route(
            "/api/v1/documents",
            get(list_documents).post(create_document),
        )
        .route(
            "/api/v1/documents/{id}",
            get(get_document)
                .patch(patch_document)
                .delete(delete_document),
        )
        .route(
            "/api/v1/documents/{id}/annotations",
            get(list_annotations).post(create_annotation),
        )
        .route(
            "/api/v1/documents/{id}/annotations/{aid}",
            axum::routing::patch(patch_annotation),
        )
        .route(
            "/api/v1/documents/{id}/annotations/{aid}/replies",
            post(reply_to_annotation),
        )
        .route(
            "/api/v1/documents/{id}/attachments",
            get(attachments::list).post(attachments::upload),
        )
        .route(
            "/api/v1/documents/{id}/attachments/{hash}",
            get(attachments::download).delete(attachments::remove),
        )
        .route("/api/v1/documents/{id}/actions", post(office::act))
        .route("/api/v1/documents/{id}/history", get(document_history))
        .route("/api/v1/documents/{id}/restore", post(restore_document))
        .route("/api/v1/documents/{id}/deletion", post(decide_deletion))
        .route("/api/v1/conflicts", get(list_conflicts))
        .route("/api/v1/documents/{id}/signatures", get(office::signatures))
        .route("/api/v1/registers", get(office::list_registers))
        .route(
            "/api/v1/registers/{series}/{year}",
            get(office::show_register),
        )
        .route(
            "/api/v1/registers/{series}/{year}/close",
            post(office::close_register),
        )
        .route("/api/v1/login", post(login))
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/me", get(me))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(same_origin))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::map_response(errors_as_json))
        .with_state(state)
}

/// An error as the API reports it.
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }

    pub fn not_found(id: &str) -> ApiError {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no document with id {id} on this node"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.0.is_server_error() {
            tracing::error!(status = %self.0, error = %self.1, "request failed");
        }
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(id) => ApiError::not_found(id.as_str()),
            StoreError::Model(m) => ApiError::bad_request(m.to_string()),
            other => ApiError(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl From<model::ModelError> for ApiError {
    fn from(e: model::ModelError) -> ApiError {
        ApiError::bad_request(e.to_string())
    }
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> ApiError {
        match e {
            UserError::WrongPassword => ApiError(StatusCode::UNAUTHORIZED, e.to_string()),
            UserError::Sql(_) | UserError::Damaged(..) | UserError::Hash(_) | UserError::Sealed => {
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
            other => ApiError::bad_request(other.to_string()),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Paths anyone on the LAN may use without signing in.
fn is_open(method: &Method, path: &str) -> bool {
    matches!(
        (method, path),
        (&Method::GET, "/") | (&Method::GET, "/api/v1/status") | (&Method::POST, "/api/v1/login")
    )
}

fn bearer(request: &Request) -> Option<String> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// Setup mode (no user yet): this machine only, without credentials. Otherwise: a valid
/// token, whose user the handlers find in the request's extensions.
async fn authenticate(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let users = state.users.clone();
    let token = bearer(&request);
    let checked = tokio::task::spawn_blocking(move || {
        let dir = users.lock().unwrap_or_else(|p| p.into_inner());
        let setup = dir.is_empty()?;
        let actor = match (&token, setup) {
            (Some(t), false) => dir.authenticate(t)?,
            _ => None,
        };
        Ok::<_, UserError>((setup, actor))
    })
    .await;
    let (setup, actor) = match checked {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return ApiError::from(e).into_response(),
        Err(e) => {
            return ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
        }
    };
    if setup {
        if !peer.ip().is_loopback() {
            return ApiError(
                StatusCode::FORBIDDEN,
                "this node is in setup mode and answers only requests from the machine it \
                 runs on; create the first user with `cabinet-node user add` to open it to \
                 the LAN"
                    .into(),
            )
            .into_response();
        }
        return next.run(request).await;
    }
    match actor {
        Some(actor) => {
            request.extensions_mut().insert(Arc::new(actor));
        }
        None if is_open(request.method(), request.uri().path()) => {}
        None => {
            let message = if bearer(&request).is_some() {
                "the sign-in token is not valid (it expired, or the user signed out): sign \
                 in again with POST /api/v1/login"
            } else {
                "sign in first: POST /api/v1/login {\"user\", \"password\"} gives a token \
                 to send as Authorization: Bearer TOKEN"
            };
            let mut response = ApiError(StatusCode::UNAUTHORIZED, message.into()).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    next.run(request).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    user: String,
    password: String,
}

async fn login(State(state): State<AppState>, body: Bytes) -> ApiResult<Json<JsonValue>> {
    let login: Login = parse_body(&body)?;
    let _slot = state
        .login_slots
        .acquire()
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let users = state.users.clone();
    let result = tokio::task::spawn_blocking(move || {
        let lock = || users.lock().unwrap_or_else(|p| p.into_inner());
        // The slow hashing runs without the directory, so other requests are not held up.
        let credentials = lock().credentials(&login.user);
        credentials
            .and_then(|c| sync_core::users::open_key(c.as_ref(), &login.password))
            .and_then(|key| match key {
                Some(key) => lock().issue_token(&login.user, key),
                None => Err(UserError::WrongPassword),
            })
            .map_err(|e| (login.user.chars().take(64).collect::<String>(), e))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match result {
        Ok((token, actor)) => {
            tracing::info!(user = %actor.user.name, "signed in");
            Ok(Json(json!({
                "token": token,
                "user": actor.user,
                "expires_in": sync_core::users::TOKEN_LIFETIME.as_secs(),
            })))
        }
        Err((user, e)) => {
            tracing::warn!(%user, reason = %e, "sign-in refused");
            Err(e.into())
        }
    }
}

async fn logout(State(state): State<AppState>, request: Request) -> ApiResult<StatusCode> {
    if let Some(token) = bearer(&request) {
        let users = state.users.clone();
        users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .logout(&token);
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn me(actor: Option<Extension<Arc<Actor>>>) -> ApiResult<Json<JsonValue>> {
    let actor = office::signed_in(actor)?;
    Ok(Json(json!({ "user": actor.user })))
}

/// Refuses what a web page elsewhere could make the clerk's browser send. The node trusts
/// requests from this machine in setup mode, so a page on any site open in the clerk's
/// browser could otherwise write into the store (a form or script posting across sites)
/// or read it (through a name of the attacker's that resolves to 127.0.0.1).
///
/// - A `Host` must name the node by an IP address or `localhost`, never by a domain name
///   the node cannot vouch for. (Clients that send no `Host` are not browsers.)
/// - A request that changes something and carries an `Origin` (browsers send one with
///   every cross-site write) must come from the node's own pages: same host and port.
// TODO: once users can sign in and the node answers the LAN, operators will want to name
// it (`may-chu-xa.local`); that needs a configured list of host names.
async fn same_origin(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(host) = host
        && !host_is_an_address(host)
    {
        return ApiError(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this node answers only to its address (such as 127.0.0.1:7700), not to \
                 the name {host:?}"
            ),
        )
        .into_response();
    }
    let writes = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if writes && let Some(origin) = headers.get(header::ORIGIN) {
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, rest)| rest.trim_end_matches('/'));
        if host.is_none() || origin_host != host {
            return ApiError(
                StatusCode::FORBIDDEN,
                "requests from another site's pages are refused".into(),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Is `host` (a `Host` header: name or address, optional port) an IP address or
/// `localhost`?
fn host_is_an_address(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// Gives every error the API's shape, `{ "error": "…" }`, including those that axum
/// produces itself before a handler runs (a body over the size limit, a bad path).
async fn errors_as_json(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .filter(|t| !t.is_empty());
    let message = match (status, text) {
        (StatusCode::PAYLOAD_TOO_LARGE, _) => format!(
            "the request body is larger than the limit of {} MiB",
            MAX_BODY_BYTES / (1024 * 1024)
        ),
        (_, Some(text)) => text,
        (_, None) => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string(),
    };
    let mut out = ApiError(status, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such API endpoint".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint does not take that method; see docs/api.md".into(),
    )
}

/// Runs store work off the async threads, under the store lock.
pub async fn with_store<R: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&mut Store) -> ApiResult<R> + Send + 'static,
) -> ApiResult<R> {
    with_store_as(state, None, f).await
}

/// [`with_store`], with every change it makes recorded in the document's history as made
/// by the signed-in user on this node.
pub async fn with_store_as<R: Send + 'static>(
    state: &AppState,
    actor: Option<Arc<Actor>>,
    f: impl FnOnce(&mut Store) -> ApiResult<R> + Send + 'static,
) -> ApiResult<R> {
    let store = state.store.clone();
    let by = actor.map(|a| a.user.name.clone());
    let node = state.net.id().to_string();
    tokio::task::spawn_blocking(move || match by {
        Some(by) => model::as_author(&by, &node, || f(&mut service::lock(&store))),
        None => f(&mut service::lock(&store)),
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// Parses a JSON object body with errors that name the problem (unknown field, wrong
/// type). Only an object is taken: serde would otherwise fill a struct from an array by
/// position.
pub fn parse_body<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    let value: JsonValue = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object, such as {\"subject\": \"…\"}",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

pub fn parse_id(id: &str) -> ApiResult<DocId> {
    DocId::parse(id).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn validate_audience(codes: &[String]) -> ApiResult<()> {
    for code in codes {
        UnitCode::parse(code).map_err(|e| ApiError::bad_request(format!("audience: {e}")))?;
    }
    Ok(())
}

/// Refuses a change to another unit's incoming document: it belongs to the unit that
/// received it.
pub fn refuse_foreign_incoming(document: &JsonValue, unit: &str) -> ApiResult<()> {
    if document["unit"] != unit && document["direction"] == "incoming" {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "an incoming document belongs to the unit that received it: only its offices \
             change it"
                .into(),
        ));
    }
    Ok(())
}

/// The document with `id` as stored with it (its fields and lifecycle, without the
/// checks [`document_json`] adds), for a step that only needs to look at it; other
/// records and missing ids are both "not found".
pub fn stored_document(store: &Store, id: &DocId) -> ApiResult<JsonValue> {
    match store.stored_json(id)? {
        Some(v) if v["kind"] == "document" => Ok(v),
        _ => Err(ApiError::not_found(id.as_str())),
    }
}

/// The document with `id`, as JSON with its signatures checked (see
/// `office::enrich`); other records and missing ids are both "not found".
pub fn document_json(store: &mut Store, id: &DocId) -> ApiResult<JsonValue> {
    let doc = store
        .get(id)?
        .ok_or_else(|| ApiError::not_found(id.as_str()))?;
    if model::read_header(doc)?.kind != Kind::Document {
        return Err(ApiError::not_found(id.as_str()));
    }
    let mut value = model::to_json(id, doc)?;
    office::enrich(store, id, &mut value)?;
    Ok(value)
}

async fn index() -> Html<&'static str> {
    Html(include_str!("ui.html"))
}

async fn status(State(state): State<AppState>) -> ApiResult<Json<JsonValue>> {
    let net = state.net.clone();
    let store = state.store.clone();
    let value = tokio::task::spawn_blocking(move || service::status_json(&store, &net))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(value))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    q: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
    deleted: Option<bool>,
    /// Only documents in this lifecycle state (`received`: the incoming queue).
    state: Option<String>,
    /// Only `outgoing` or only `incoming` documents.
    direction: Option<String>,
}

async fn list_documents(
    State(state): State<AppState>,
    actor: Option<Extension<Arc<Actor>>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<JsonValue>> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(MAX_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    if let Some(d) = query.direction.as_deref()
        && !matches!(d, "outgoing" | "incoming")
    {
        return Err(ApiError::bad_request(
            "direction is \"outgoing\" or \"incoming\"",
        ));
    }
    if query.q.is_some() {
        let reader = reader(&state, &actor.map(|Extension(a)| a));
        return search_documents(state, reader, query, limit).await;
    }
    let after = match query.after.as_deref() {
        Some(token) => Some(
            DocId::parse(token)
                .map_err(|_| ApiError::bad_request("after: not a token from a previous page"))?,
        ),
        None => None,
    };
    let page = with_store(&state, move |s| {
        let filter = sync_core::store::ListFilter {
            state: query.state.as_deref(),
            direction: query.direction.as_deref(),
        };
        Ok(service::list_page(
            s,
            Some(Kind::Document),
            after.as_ref(),
            limit,
            query.deleted.unwrap_or(false),
            &filter,
        )?)
    })
    .await?;
    Ok(Json(page))
}

/// A secret document (độ mật) stays on its unit's nodes, so its audience is its unit.
/// `GET /api/v1/documents?q=TEXT`: documents ranked by how well they match, each with
/// `"search": {"rank", "snippets"}`; pages are named by `next` tokens of the form `o:N`.
async fn search_documents(
    state: AppState,
    reader: Option<Signed>,
    query: ListQuery,
    limit: usize,
) -> ApiResult<Json<JsonValue>> {
    let offset = match query.after.as_deref() {
        Some(token) => token
            .strip_prefix("o:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| ApiError::bad_request("after: not a token from a previous page"))?,
        None => 0,
    };
    let text = query.q.unwrap_or_default();
    let page = with_store(&state, move |s| {
        let filter = sync_core::store::ListFilter {
            state: query.state.as_deref(),
            direction: query.direction.as_deref(),
        };
        let may_read =
            |note: &JsonValue| model::may_read_annotation(note, reader.as_ref().map(Signed::get));
        let (hits, more) = s.search(
            &text,
            &may_read,
            query.deleted.unwrap_or(false),
            &filter,
            offset,
            limit,
        )?;
        let words = sync_core::search::query_words(&text);
        let documents: Vec<JsonValue> = hits
            .iter()
            .map(|hit| {
                let mut d = hit.document.clone();
                d["search"] = sync_core::search::result_json(hit, &words);
                d
            })
            .collect();
        let next = more.then(|| format!("o:{}", offset + documents.len()));
        Ok(json!({ "documents": documents, "next": next }))
    })
    .await?;
    Ok(Json(page))
}

fn refuse_secret_audience(secret: bool, audience: &[String], unit: &str) -> ApiResult<()> {
    if secret && audience.iter().any(|u| u != unit) {
        return Err(ApiError::bad_request(
            "a secret document (độ mật) never leaves its unit: its audience is the unit alone",
        ));
    }
    Ok(())
}

async fn create_document(
    State(state): State<AppState>,
    actor: Option<Extension<Arc<Actor>>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<JsonValue>)> {
    let actor = actor.map(|Extension(a)| a);
    let patch: DocumentPatch = parse_body(&body)?;
    if patch.body_splice.is_some() {
        return Err(ApiError::bad_request(
            "a new document takes \"body\", not \"body_splice\"",
        ));
    }
    let creator = state.net.id().to_string();
    let value = with_store_as(&state, actor.clone(), move |s| {
        let unit = s.info().unit.clone();
        let mut audience = patch.audience.clone().unwrap_or_default();
        validate_audience(&audience)?;
        let secret = patch
            .secrecy
            .as_deref()
            .is_some_and(|s| !s.trim().is_empty());
        refuse_secret_audience(secret, &audience, &unit)?;
        audience.push(unit.clone());
        audience.sort();
        audience.dedup();
        let header = Header {
            kind: Kind::Document,
            unit,
            audience: audience.clone(),
            created_by: creator,
            created_at: model::now_vietnam(),
            confidential: false,
        };
        // An outgoing document is issued by the office unless it names another body.
        let outgoing = patch.direction.as_deref() != Some("incoming");
        let issuer = match patch.issuer.clone() {
            Some(i) if !i.trim().is_empty() => Some(i),
            _ if outgoing => Some(s.info().name.clone()),
            other => other,
        };
        let patch = DocumentPatch {
            audience: Some(audience),
            issuer,
            ..patch
        };
        let doc = model::create_document(&header, &patch)?;
        let id = DocId::new();
        s.put(&id, doc, &[])?;
        document_json(s, &id)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(value)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    /// A version: its heads, comma-separated hex change hashes.
    at: Option<String>,
}

fn heads_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect()
}

async fn get_document(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<VersionQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<JsonValue>> {
    let id = parse_id(&id)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(at) = query.at {
        // An earlier version, as it was: read-only, without today's checks.
        let value = with_store(&state, move |s| {
            document_json(s, &id)?;
            let doc = s.get(&id)?.expect("checked above");
            let heads = model::parse_heads(doc, &heads_list(&at))?;
            Ok(model::version_json(&id, doc, &heads)?)
        })
        .await?;
        return Ok(Json(value));
    }
    let mut value = with_store(&state, move |s| document_json(s, &id)).await?;
    office::mark_signers(&state, &mut value);
    Ok(Json(value))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<usize>,
    skip: Option<usize>,
}

/// `GET /api/v1/documents/{id}/history`: who changed what and when, newest first.
async fn document_history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<JsonValue>> {
    let id = parse_id(&id)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let skip = query.skip.unwrap_or(0);
    let value = with_store(&state, move |s| {
        document_json(s, &id)?;
        let doc = s.get(&id)?.expect("checked above");
        let total = doc.get_changes(&[]).len();
        Ok(json!({
            "id": id.as_str(),
            "changes": model::history(doc, skip, limit),
            "total": total,
        }))
    })
    .await?;
    Ok(Json(value))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreRequest {
    heads: Vec<String>,
}

/// `POST /api/v1/documents/{id}/restore {"heads"}`: the content of an earlier version, as
/// a new change.
async fn restore_document(
    State(state): State<AppState>,
    Path(id): Path<String>,
    actor: Option<Extension<Arc<Actor>>>,
    body: Bytes,
) -> ApiResult<Json<JsonValue>> {
    let id = parse_id(&id)?;
    let request: RestoreRequest = parse_body(&body)?;
    let actor = actor.map(|Extension(a)| a);
    let value = with_store_as(&state, actor.clone(), move |s| {
        let current = document_json(s, &id)?;
        if current["unit"] != s.info().unit.as_str() {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "only the unit that owns a document restores an earlier version of it".into(),
            ));
        }
        if current["deleted"] == true {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "this document was deleted; it cannot be restored to an earlier version".into(),
            ));
        }
        let heads = model::parse_heads(s.get(&id)?.expect("checked above"), &request.heads)?;
        s.modify(&id, |doc| model::restore(doc, &heads))?;
        document_json(s, &id)
    })
    .await?;
    Ok(Json(value))
}

async fn patch_document(
    State(state): State<AppState>,
    Path(id): Path<String>,
    actor: Option<Extension<Arc<Actor>>>,
    body: Bytes,
) -> ApiResult<Json<JsonValue>> {
    let actor = actor.map(|Extension(a)| a);
    let id = parse_id(&id)?;
    let patch: DocumentPatch = parse_body(&body)?;
    let value = with_store_as(&state, actor.clone(), move |s| {
        let unit = s.info().unit.clone();
        let current = document_json(s, &id)?;
        let owned = current["unit"] == unit.as_str();
        refuse_foreign_incoming(&current, &unit)?;
        if !owned && (patch.audience.is_some() || patch.secrecy.is_some()) {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                "only the unit that owns this document changes who may see it (its \
                 audience or secrecy)"
                    .into(),
            ));
        }
        if let Some(audience) = &patch.audience {
            validate_audience(audience)?;
            if !audience.contains(&unit) {
                return Err(ApiError::bad_request(format!(
                    "audience must keep this node's unit {unit}"
                )));
            }
        }
        // Widening a secret document's audience is refused; marking a shared document
        // secret is not (from then on it is held back from the other units).
        if let Some(audience) = &patch.audience {
            let secret = patch
                .secrecy
                .as_deref()
                .or(current["secrecy"].as_str())
                .is_some_and(|s| !s.trim().is_empty());
            refuse_secret_audience(secret, audience, &unit)?;
        }
        if current["deleted"] == true {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "this document was deleted; it cannot be edited".into(),
            ));
        }
        s.modify(&id, |doc| model::update_document(doc, &patch))?;
        document_json(s, &id)
    })
    .await?;
    Ok(Json(value))
}

async fn delete_document(
    State(state): State<AppState>,
    Path(id): Path<String>,
    actor: Option<Extension<Arc<Actor>>>,
) -> ApiResult<Json<JsonValue>> {
    let id = parse_id(&id)?;
    // Who deleted it: the signed-in user, or the node in setup mode.
    let actor = actor.map(|Extension(a)| a);
    let by = actor
        .as_ref()
        .map_or_else(|| state.net.id().to_string(), |a| a.user.name.clone());
    let value = with_store_as(&state, actor.clone(), move |s| {
        check_may_delete(s, &id)?;
        if sync_core::lifecycle::content_fixed(s.get(&id)?.expect("checked above")) {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "the document is being issued or was issued: it is recalled, corrected or \
                 replaced, not deleted"
                    .into(),
            ));
        }
        if !model::is_deleted(s.get(&id)?.expect("checked above")) {
            s.modify(&id, |doc| model::tombstone(doc, &by))?;
        }
        document_json(s, &id)
    })
    .await?;
    Ok(Json(value))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeletionDecision {
    /// `delete`: the record stays deleted, with the edits it had not seen; `restore`: it
    /// comes back with every edit.
    decision: String,
}

/// The owning unit's checks before a deletion or a decision about one.
fn check_may_delete(s: &mut Store, id: &DocId) -> ApiResult<JsonValue> {
    let current = stored_document(s, id)?;
    if current["unit"] != s.info().unit.as_str() {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "the document belongs to unit {}: only its own offices delete or restore it",
                current["unit"].as_str().unwrap_or("")
            ),
        ));
    }
    Ok(current)
}

/// `POST /api/v1/documents/{id}/deletion {"decision": "delete" | "restore"}`: settles a
/// deleted document, in particular one with edits its deletion had not seen.
async fn decide_deletion(
    State(state): State<AppState>,
    Path(id): Path<String>,
    actor: Option<Extension<Arc<Actor>>>,
    body: Bytes,
) -> ApiResult<Json<JsonValue>> {
    let id = parse_id(&id)?;
    let request: DeletionDecision = parse_body(&body)?;
    let actor = actor.map(|Extension(a)| a);
    let by = actor
        .as_ref()
        .map_or_else(|| state.net.id().to_string(), |a| a.user.name.clone());
    let value = with_store_as(&state, actor.clone(), move |s| {
        let current = check_may_delete(s, &id)?;
        if current["deleted"] != true {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "the document is not deleted: there is nothing to decide".into(),
            ));
        }
        match request.decision.as_str() {
            // A new tombstone, made having seen every edit: the conflict ends.
            "delete" => {
                s.modify(&id, |doc| model::tombstone(doc, &by))?;
            }
            "restore" => {
                s.modify(&id, model::undelete)?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "decision {other:?}: say \"delete\" (it stays deleted) or \"restore\" \
                     (it comes back with every edit)"
                )));
            }
        }
        document_json(s, &id)
    })
    .await?;
    Ok(Json(value))
}

/// `GET /api/v1/conflicts`: documents that need a person's decision: a field two people
/// set at once, or edits a deletion had not seen.
async fn list_conflicts(State(state): State<AppState>) -> ApiResult<Json<JsonValue>> {
    let value = with_store(&state, move |s| {
        let mut documents = Vec::new();
        for id in s.conflicted()? {
            documents.push(document_json(s, &id)?);
        }
        Ok(json!({ "documents": documents }))
    })
    .await?;
    Ok(Json(value))
}

async fn create_annotation(
    State(state): State<AppState>,
    Path(id): Path<String>,
    actor: Option<Extension<Arc<Actor>>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<JsonValue>)> {
    let target_id = parse_id(&id)?;
    let input: NewAnnotation = parse_body(&body)?;
    let creator = state.net.id().to_string();
    // The signed-in user; in setup mode only the node can be vouched for.
    let actor = actor.map(|Extension(a)| a);
    let author = actor
        .as_ref()
        .map_or_else(|| creator.clone(), |a| a.user.name.clone());
    let input = NewAnnotation {
        author: Some(author),
        ..input
    };
    if input.visibility == Visibility::Shared {
        let users = state.users.clone();
        let names = input.shared_with.clone();
        let unknown = tokio::task::spawn_blocking(move || {
            let users = users.lock().unwrap_or_else(|p| p.into_inner());
            names
                .into_iter()
                .filter(|n| users.user(n).is_err())
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if !unknown.is_empty() && actor.is_some() {
            return Err(ApiError::bad_request(format!(
                "shared_with names no user of this node: {}",
                unknown.join(", ")
            )));
        }
    }
    let value = with_store_as(&state, actor.clone(), move |s| {
        let unit = s.info().unit.clone();
        let target_json = stored_document(s, &target_id)?;
        if target_json["deleted"] == true {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "this document was deleted; it cannot be annotated".into(),
            ));
        }
        // Private notes and those shared with named people stay in this unit.
        let audience = match input.visibility {
            Visibility::Private | Visibility::Shared => vec![unit.clone()],
            Visibility::Audience => {
                serde_json::from_value(target_json["audience"].clone()).unwrap_or_default()
            }
        };
        let header = Header {
            kind: Kind::Annotation,
            unit,
            audience,
            created_by: creator,
            created_at: model::now_vietnam(),
            confidential: input.visibility != Visibility::Audience,
        };
        let target = s.get(&target_id)?.expect("checked above");
        let doc = model::create_annotation(&header, &target_id, target, &input)?;
        let id = DocId::new();
        s.put(&id, doc, &[])?;
        annotation_view(s, &target_id, &id)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(value)))
}

/// An annotation's JSON, its anchor resolved against its document's body.
fn annotation_view(s: &mut Store, target_id: &DocId, id: &DocId) -> ApiResult<JsonValue> {
    let annotation = s
        .take(id)?
        .ok_or_else(|| ApiError::not_found(id.as_str()))?;
    let value = match s.get(target_id)? {
        Some(target) => model::annotation_json(id, &annotation, target),
        None => Err(model::ModelError::Invalid(
            "its document is not here".into(),
        )),
    };
    s.untake(id.clone(), annotation);
    Ok(value?)
}

/// The signed-in user and the node they are signed in on (users belong to one node).
#[derive(Clone)]
struct Signed {
    name: String,
    node: String,
}

impl Signed {
    fn get(&self) -> model::Reader<'_> {
        model::Reader {
            name: &self.name,
            node: &self.node,
        }
    }
}

fn reader(state: &AppState, actor: &Option<Arc<Actor>>) -> Option<Signed> {
    actor.as_ref().map(|a| Signed {
        name: a.user.name.clone(),
        node: state.net.id().to_string(),
    })
}

async fn list_annotations(
    State(state): State<AppState>,
    Path(id): Path<String>,
    actor: Option<Extension<Arc<Actor>>>,
) -> ApiResult<Json<JsonValue>> {
    let target_id = parse_id(&id)?;
    let reader = reader(&state, &actor.map(|Extension(a)| a));
    let value = with_store(&state, move |s| {
        let document = stored_document(s, &target_id)?;
        // Annotations follow their document: deleted with it, back when it is restored.
        if document["deleted"] == true {
            return Ok(json!({ "annotations": [], "document_deleted": true }));
        }
        let mut annotations = Vec::new();
        for id in s.annotations_of(&target_id)? {
            if s.meta(&id)?.is_none_or(|m| m.deleted) {
                continue;
            }
            let value = annotation_view(s, &target_id, &id)?;
            if model::may_read_annotation(&value, reader.as_ref().map(Signed::get)) {
                annotations.push(value);
            }
        }
        Ok(json!({ "annotations": annotations }))
    })
    .await?;
    Ok(Json(value))
}

/// The annotation `id` on document `target`, if `reader` may read it; anything else
/// is "not found", so a note one may not read does not show it exists.
fn readable_annotation(
    s: &mut Store,
    target: &DocId,
    id: &DocId,
    reader: Option<model::Reader<'_>>,
) -> ApiResult<JsonValue> {
    let missing = || {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no annotation {id} on document {target} here"),
        )
    };
    let document = stored_document(s, target)?;
    let meta = s.meta(id)?.ok_or_else(missing)?;
    if meta.header.kind != Kind::Annotation
        || meta.target.as_ref() != Some(target)
        || meta.deleted
        || document["deleted"] == true
    {
        return Err(missing());
    }
    let value = annotation_view(s, target, id)?;
    if !model::may_read_annotation(&value, reader) {
        return Err(missing());
    }
    Ok(value)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnnotationPatch {
    resolved: Option<bool>,
    text: Option<String>,
}

/// `PATCH /api/v1/documents/{id}/annotations/{aid}`: `resolved` by anyone who reads it,
/// `text` by its author.
async fn patch_annotation(
    State(state): State<AppState>,
    Path((id, aid)): Path<(String, String)>,
    actor: Option<Extension<Arc<Actor>>>,
    body: Bytes,
) -> ApiResult<Json<JsonValue>> {
    let (target, id) = (parse_id(&id)?, parse_id(&aid)?);
    let patch: AnnotationPatch = parse_body(&body)?;
    let actor = actor.map(|Extension(a)| a);
    let reader = reader(&state, &actor);
    let by = reader
        .as_ref()
        .map_or_else(|| state.net.id().to_string(), |r| r.name.clone());
    let value = with_store_as(&state, actor, move |s| {
        let current = readable_annotation(s, &target, &id, reader.as_ref().map(Signed::get))?;
        if let Some(text) = &patch.text {
            // Its author, on the node where it was written: a user of the same name on
            // another node is someone else.
            if reader
                .as_ref()
                .is_some_and(|r| !model::is_annotation_author(&current, r.get()))
            {
                return Err(ApiError(
                    StatusCode::FORBIDDEN,
                    "only its author, on the node where it was written, changes an \
                     annotation's text; reply instead"
                        .into(),
                ));
            }
            s.modify(&id, |doc| model::set_annotation_text(doc, text))?;
        }
        if let Some(resolved) = patch.resolved {
            s.modify(&id, |doc| model::set_resolved(doc, resolved, &by))?;
        }
        annotation_view(s, &target, &id)
    })
    .await?;
    Ok(Json(value))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewReply {
    text: String,
}

/// `POST /api/v1/documents/{id}/annotations/{aid}/replies {"text"}`.
async fn reply_to_annotation(
    State(state): State<AppState>,
    Path((id, aid)): Path<(String, String)>,
    actor: Option<Extension<Arc<Actor>>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<JsonValue>)> {
    let (target, id) = (parse_id(&id)?, parse_id(&aid)?);
    let reply: NewReply = parse_body(&body)?;
    let actor = actor.map(|Extension(a)| a);
    let reader = reader(&state, &actor);
    let by = reader
        .as_ref()
        .map_or_else(|| state.net.id().to_string(), |r| r.name.clone());
    let value = with_store_as(&state, actor, move |s| {
        readable_annotation(s, &target, &id, reader.as_ref().map(Signed::get))?;
        s.modify(&id, |doc| model::add_reply(doc, &by, &reply.text))?;
        annotation_view(s, &target, &id)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(value)))
}
