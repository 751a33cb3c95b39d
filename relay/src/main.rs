//! `cabinet-relay`: a store-and-forward hub for a cluster of communes, a province or the
//! nation. It stores what passes through it, so two offices that are never online at the
//! same time still exchange records, and it serves operators a status page, a read-only
//! listing and Prometheus metrics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::{Parser, Subcommand};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};
use sync_core::blobs::Blobs;
use sync_core::model::DocId;
use sync_core::net::{Net, NetConfig, PeerAddr, SharedStore};
use sync_core::policy::Role;
use sync_core::roster::{Roster, SignedRoster};
use sync_core::service::{self, DataDir};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "cabinet-relay",
    version,
    about = "Cabinet relay: store-and-forward between communes, clusters and provinces"
)]
struct Cli {
    /// Data directory (key and store).
    #[arg(
        long,
        global = true,
        default_value = "./cabinet-relay-data",
        env = "CABINET_RELAY_DATA"
    )]
    data: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the store and key of a relay.
    Init {
        /// A cluster id PP-DDD (province and former district codes), a province code or VN.
        #[arg(long)]
        unit: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Print the relay's node id.
    Id,
    /// Run the relay.
    Serve {
        /// Address of the status page, read-only API and metrics.
        #[arg(long, default_value = "127.0.0.1:7800")]
        http: SocketAddr,
        /// UDP address for sync connections.
        #[arg(long, default_value = "0.0.0.0:7801")]
        listen: SocketAddr,
        /// The relay above this one: NODE_ID@HOST:PORT.
        #[arg(long)]
        upstream: Option<String>,
        /// A relay of the same tier to sync with directly: NODE_ID@HOST:PORT.
        #[arg(long)]
        peer: Vec<String>,
        #[command(flatten)]
        access: Access,
        #[arg(long, default_value_t = sync_core::store::DEFAULT_CACHE_DOCUMENTS)]
        cache_documents: usize,
    },
    /// Sign a roster of this relay's subtree and publish it: peers that trust this
    /// relay's key (`--roster-key`) take it on their next sync, and pass it down.
    Roster {
        #[command(subcommand)]
        action: RosterAction,
    },
}

#[derive(Subcommand)]
enum RosterAction {
    /// Sign FILE (the roster format, with an optional `revoked = [...]` list) as the next
    /// version. A running relay on the same data directory sends it out within seconds.
    Publish { file: PathBuf },
    /// Print the signed rosters this relay holds.
    Show,
}

/// Who may sync with this process.
#[derive(clap::Args)]
struct Access {
    /// Roster of the nodes and relays allowed to connect (TOML).
    #[arg(long)]
    roster: Option<PathBuf>,
    /// The node id of a relay trusted to sign rosters for its subtree (the province
    /// relay, as a rule); its signed roster reaches this process through sync.
    #[arg(long, value_name = "NODE_ID")]
    roster_key: Vec<sync_core::net::EndpointId>,
    /// Announce this relay on the LAN and sync with peers the roster admits found there
    /// (mDNS).
    #[arg(long)]
    mdns: bool,
    /// Limit attachment downloads to this many KiB per second, so a slow line still
    /// carries documents while a large scan comes in (0: no limit).
    #[arg(long, value_name = "KIB_PER_S", default_value_t = 0)]
    attachment_rate: u64,
}

fn main() -> ExitCode {
    service::init_tracing();
    let cli = Cli::parse();
    let dir = DataDir::new(&cli.data);
    let result = match cli.command {
        Command::Init { unit, name } => dir
            .init(Role::Relay, &unit, &name)
            .map_err(anyhow::Error::from)
            .and_then(|store| {
                let id = dir.node_id()?.context("key was just created")?;
                println!(
                    "initialised {} for {} ({}); node id {id}",
                    dir.path.display(),
                    store.info().name,
                    store.info().unit
                );
                Ok(ExitCode::SUCCESS)
            }),
        Command::Id => match dir.node_id() {
            Ok(Some(id)) => {
                println!("{id}");
                Ok(ExitCode::SUCCESS)
            }
            Ok(None) => Err(anyhow::anyhow!(
                "{} has no key yet: run `cabinet-relay init --unit CODE`",
                dir.path.display()
            )),
            Err(e) => Err(e.into()),
        },
        Command::Serve {
            http,
            listen,
            upstream,
            peer,
            access,
            cache_documents,
        } => upstream
            .iter()
            .chain(&peer)
            .map(|p| Ok((p.parse::<PeerAddr>()?, Role::Relay)))
            .collect::<anyhow::Result<Vec<_>>>()
            .and_then(|dial| serve(&dir, http, listen, dial, access, cache_documents)),
        Command::Roster { action } => roster(&dir, action),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn roster(dir: &DataDir, action: RosterAction) -> anyhow::Result<ExitCode> {
    let (store, key, me) = dir.open(Role::Relay)?;
    match action {
        RosterAction::Publish { file } => {
            let roster = Roster::load(&file)?;
            if roster.is_empty() {
                bail!(
                    "{} lists no members: published, it would admit nobody below this relay",
                    file.display()
                );
            }
            let issuer = key.public().to_string();
            let held = store.rosters()?;
            // Above the last version kept here and above the clock's seconds, so a relay
            // restored from an older backup still publishes a version peers take.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let version = held
                .iter()
                .find(|(i, _, _)| *i == issuer)
                .map_or(1, |(_, v, _)| v + 1)
                .max(now);
            let signed = SignedRoster::sign(&key, &me.unit, version, &roster)?;
            store.put_roster(&issuer, version, &signed.bytes)?;
            println!(
                "published roster version {version} of {} ({}): {} members, {} revoked; \
                 peers that trust {issuer} take it on their next sync",
                me.unit.name(),
                me.unit,
                roster.len(),
                roster.revoked_len(),
            );
        }
        RosterAction::Show => {
            let held = store.rosters()?;
            if held.is_empty() {
                println!("no signed roster held");
            }
            for (issuer, version, bytes) in held {
                let id: sync_core::net::EndpointId = issuer.parse()?;
                match SignedRoster::verify(&bytes, &[id]) {
                    Ok(r) => println!(
                        "{issuer} ({}) version {version}, issued {}: {} members, {} revoked",
                        r.unit,
                        r.issued_at,
                        r.roster.len(),
                        r.roster.revoked_len()
                    ),
                    Err(e) => println!("{issuer} version {version}: does not verify ({e})"),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone)]
struct AppState {
    store: SharedStore,
    net: Arc<Net>,
}

fn serve(
    dir: &DataDir,
    http: SocketAddr,
    listen: SocketAddr,
    dial: Vec<(PeerAddr, Role)>,
    access: Access,
    cache_documents: usize,
) -> anyhow::Result<ExitCode> {
    if !dir.is_initialised() {
        bail!(
            "{} has no store yet: run `cabinet-relay init --unit CODE` first",
            dir.path.display()
        );
    }
    let _serving = dir.lock_for_serving()?;
    let (mut store, key, me) = dir.open(Role::Relay)?;
    store.set_cache_capacity(cache_documents);
    let roster = match &access.roster {
        Some(path) => Roster::load(path)?,
        None => Roster::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = service::share(store);
        let net = Arc::new(
            Net::start(
                key,
                store.clone(),
                NetConfig {
                    listen,
                    me: me.clone(),
                    dial,
                    roster,
                    roster_keys: access.roster_key,
                    mdns: access.mdns,
                    blobs: std::sync::Arc::new(Blobs::open(&dir.attachments_path())?),
                    attachment_rate: (access.attachment_rate > 0)
                        .then(|| access.attachment_rate * 1024),
                },
            )
            .await?,
        );
        info!(id = %net.id(), unit = %me.unit, "relay started");
        let app = Router::new()
            .route("/", get(status_page))
            .route("/api/v1/status", get(status))
            .route("/api/v1/documents", get(list))
            .route("/api/v1/documents/{id}", get(get_record))
            .route("/metrics", get(metrics))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
            .method_not_allowed_fallback(|| async {
                error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "a relay's API is read-only: it answers GET only",
                )
            })
            .with_state(AppState {
                store,
                net: net.clone(),
            });
        let listener = tokio::net::TcpListener::bind(http)
            .await
            .with_context(|| format!("cannot listen for HTTP on {http}"))?;
        info!(%http, "status page listening");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler installs");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            })
            .await?;
        info!("relay stopping");
        net.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e)),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
    }
}

async fn status(State(s): State<AppState>) -> Result<Json<JsonValue>, Response> {
    blocking(move || service::status_json(&s.store, &s.net).map_err(|e| e.to_string()))
        .await
        .map(Json)
}

/// What a relay shows of a record: who it is for, not what it says.
fn summary(record: &JsonValue) -> JsonValue {
    json!({
        "id": record["id"],
        "kind": record["kind"],
        "unit": record["unit"],
        "audience": record["audience"],
        "heads": record["heads"],
        "deleted": record["deleted"],
        "deleted_by": record["deleted_by"],
        "deleted_at": record["deleted_at"],
        "deletion_conflict": record["deletion_conflict"],
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
    deleted: Option<bool>,
}

async fn list(
    State(s): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JsonValue>, Response> {
    let Query(q) = query.map_err(|e| error(StatusCode::BAD_REQUEST, &e.body_text()))?;
    let limit = q.limit.unwrap_or(10_000);
    if limit == 0 || limit > 10_000 {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "limit must be between 1 and 10000",
        ));
    }
    let after = match q.after.as_deref() {
        Some(t) => Some(DocId::parse(t).map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                "after: not a token from a previous page",
            )
        })?),
        None => None,
    };
    let mut page = blocking(move || {
        let store = service::lock(&s.store);
        service::list_page(
            &store,
            None,
            after.as_ref(),
            limit,
            q.deleted.unwrap_or(false),
            &Default::default(),
        )
        .map_err(|e| e.to_string())
    })
    .await?;
    if let Some(docs) = page["documents"].as_array_mut() {
        for d in docs.iter_mut() {
            *d = summary(d);
        }
    }
    Ok(Json(page))
}

async fn get_record(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JsonValue>, Response> {
    let not_found = || {
        error(
            StatusCode::NOT_FOUND,
            &format!("no record with id {id} on this relay"),
        )
    };
    let doc_id = DocId::parse(&id).map_err(|e| error(StatusCode::BAD_REQUEST, &e.to_string()))?;
    let found = blocking(move || {
        let mut store = service::lock(&s.store);
        match store.get(&doc_id).map_err(|e| e.to_string())? {
            Some(doc) => sync_core::model::to_json(&doc_id, doc)
                .map(Some)
                .map_err(|e| e.to_string()),
            None => Ok(None),
        }
    })
    .await?;
    found.map(|r| Json(summary(&r))).ok_or_else(not_found)
}

async fn metrics(State(s): State<AppState>) -> Result<Response, Response> {
    let status =
        blocking(move || service::status_json(&s.store, &s.net).map_err(|e| e.to_string())).await?;
    let peers = status["peers"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    out.push_str("# HELP cabinet_records Records held by this relay.\n");
    out.push_str("# TYPE cabinet_records gauge\n");
    out.push_str(&format!("cabinet_records {}\n", status["documents"]));
    out.push_str("# HELP cabinet_peer_connected Whether a peer is connected (1) or not (0).\n");
    out.push_str("# TYPE cabinet_peer_connected gauge\n");
    for p in &peers {
        out.push_str(&format!(
            "cabinet_peer_connected{{peer=\"{}\",unit=\"{}\"}} {}\n",
            p["id"].as_str().unwrap_or(""),
            p["unit"].as_str().unwrap_or(""),
            u8::from(p["connected"].as_bool().unwrap_or(false))
        ));
    }
    out.push_str("# HELP cabinet_peer_pending_out Records waiting to go to a peer.\n");
    out.push_str("# TYPE cabinet_peer_pending_out gauge\n");
    for p in &peers {
        out.push_str(&format!(
            "cabinet_peer_pending_out{{peer=\"{}\"}} {}\n",
            p["id"].as_str().unwrap_or(""),
            p["pending_out"]
        ));
    }
    let a = &status["attachments"];
    for (name, help, kind, value) in [
        (
            "cabinet_attachments_waiting",
            "Attachment files listed by records here but not yet held.",
            "gauge",
            &a["waiting"],
        ),
        (
            "cabinet_attachment_bytes_sent_total",
            "Attachment bytes served to peers.",
            "counter",
            &a["bytes_sent"],
        ),
        (
            "cabinet_attachment_bytes_received_total",
            "Attachment bytes received and verified.",
            "counter",
            &a["bytes_received"],
        ),
        (
            "cabinet_attachments_completed_total",
            "Attachment files fetched whole.",
            "counter",
            &a["completed"],
        ),
        (
            "cabinet_attachment_corrupt_transfers_total",
            "Transfers stopped by data that did not verify.",
            "counter",
            &a["corrupt_transfers"],
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    Ok(([("content-type", "text/plain; version=0.0.4")], out).into_response())
}

async fn status_page(State(s): State<AppState>) -> Result<Html<String>, Response> {
    let status =
        blocking(move || service::status_json(&s.store, &s.net).map_err(|e| e.to_string())).await?;
    let rosters: Vec<String> = status["rosters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            html_escape(&format!(
                "{} v{} ({} members, {} revoked, {})",
                r["unit"].as_str().unwrap_or("?"),
                r["version"],
                r["members"],
                r["revoked"],
                r["issued_at"].as_str().unwrap_or("?"),
            ))
        })
        .collect();
    let rosters = if rosters.is_empty() {
        "không có (none)".to_string()
    } else {
        rosters.join(" · ")
    };
    let mut rows = String::new();
    for p in status["peers"].as_array().into_iter().flatten() {
        rows.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html_escape(&p["id"].as_str().unwrap_or("").chars().take(16).collect::<String>()),
            html_escape(p["unit"].as_str().unwrap_or("?")),
            html_escape(p["tier"].as_str().unwrap_or("?")),
            if p["revoked"].as_bool().unwrap_or(false) {
                "thu hồi (revoked)"
            } else if p["connected"].as_bool().unwrap_or(false) {
                "có (yes)"
            } else {
                "không (no)"
            },
            html_escape(p["last_sync"].as_str().unwrap_or("—")),
            p["pending_out"],
            p["pending_in"],
        ));
    }
    Ok(Html(format!(
        "<!doctype html><html lang=\"vi\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\"><title>Cabinet relay</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:1.5rem}}td,th{{padding:.3rem .7rem;\
         border-bottom:1px solid #ddd;text-align:left}}</style></head><body>\
         <h1>Trạm chuyển tiếp {} ({})</h1><p>Mã nút (node id): <code>{}</code> · \
         Bản ghi (records): {}</p><p>Danh sách thành viên (rosters): {}</p>\
         <table><tr><th>Nút (peer)</th><th>Đơn vị (unit)</th><th>Cấp (tier)</th>\
         <th>Kết nối (connected)</th><th>Đồng bộ lần cuối (last sync)</th>\
         <th>Chờ gửi (pending out)</th><th>Chờ nhận (pending in)</th></tr>{rows}</table>\
         </body></html>",
        html_escape(status["name"].as_str().unwrap_or("")),
        html_escape(status["unit"].as_str().unwrap_or("")),
        html_escape(status["node_id"].as_str().unwrap_or("")),
        status["documents"],
        rosters,
    )))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
