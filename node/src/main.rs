//! `cabinet-node`: a commune office's node. It holds the unit's records, serves the
//! clerks' API and web UI on the office LAN, and syncs with peers and relays whenever it
//! can reach them.

mod api;
mod attachments;
mod office;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sync_core::blobs::Blobs;
use sync_core::model::{self, DocId, DocumentPatch, Header, Kind};
use sync_core::net::{Net, NetConfig, PeerAddr};
use sync_core::policy::Role;
use sync_core::roster::Roster;
use sync_core::service::{self, DataDir};
use sync_core::store::Store;
use sync_core::units::UnitCode;
use sync_core::users::{Directory, UserRole};
use tracing::info;

/// The unit a node serves when `serve` finds an empty data directory.
const DEFAULT_UNIT: &str = "18562";

#[derive(Parser)]
#[command(
    name = "cabinet-node",
    version,
    about = "Cabinet commune node: documents that keep working offline"
)]
struct Cli {
    /// Data directory (key and store).
    #[arg(
        long,
        global = true,
        default_value = "./cabinet-data",
        env = "CABINET_DATA"
    )]
    data: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the store and node key for a unit.
    Init {
        /// Commune code (5 digits) or province code (2 digits) from the national list.
        #[arg(long)]
        unit: String,
        /// The office's name; defaults to the unit's official name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Print the node id.
    Id,
    /// Run the node: HTTP API and web UI, and sync with peers and relays.
    Serve(ServeArgs),
    /// Check a document's signatures from the store, without the server: which version
    /// each one signed, whether it still covers the content (prints JSON).
    Verify {
        /// The document's id.
        id: String,
    },
    /// Manage the people who use this node.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Import official documents from Markdown or text files.
    Import {
        /// Units that may see the imported documents (comma-separated codes); defaults to
        /// this node's unit.
        #[arg(long, value_delimiter = ',')]
        audience: Vec<String>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address of the API and web UI.
    #[arg(long, default_value = "127.0.0.1:7700")]
    http: SocketAddr,
    /// UDP address for sync connections from peers.
    #[arg(long, default_value = "0.0.0.0:7701")]
    listen: SocketAddr,
    /// Another node to sync with directly: NODE_ID@HOST:PORT.
    #[arg(long)]
    peer: Vec<String>,
    /// A relay to sync through: NODE_ID@HOST:PORT.
    #[arg(long)]
    relay: Vec<String>,
    #[command(flatten)]
    access: Access,
    /// Loaded documents kept in memory.
    #[arg(long, default_value_t = sync_core::store::DEFAULT_CACHE_DOCUMENTS)]
    cache_documents: usize,
    /// This node is the unit's registrar: it gives the numbers of the unit's registers
    /// and receives documents dispatched to the unit. Exactly one node of a unit should
    /// be; on any other, a number request waits for the registrar.
    #[arg(long)]
    registrar: bool,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; the password is read from standard input (one line).
    Add {
        /// The sign-in name, such as nguyen.van.a.
        name: String,
        /// clerk (văn thư), leader (lãnh đạo) or member (chuyên viên).
        #[arg(long)]
        role: String,
        /// The full name printed in signatures; defaults to the sign-in name.
        #[arg(long, default_value = "")]
        full_name: String,
        /// The position printed with a signature, such as "Chủ tịch".
        #[arg(long, default_value = "")]
        title: String,
    },
    /// List the users with their roles and public keys.
    List,
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
    /// Do not announce this node on the LAN nor look for peers there (mDNS). Peers the
    /// roster admits are found and synced with directly when mDNS is on.
    #[arg(long)]
    no_mdns: bool,
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
        Command::Init { unit, name } => init(&dir, &unit, &name),
        Command::Id => print_id(&dir),
        Command::Serve(args) => serve(&dir, args),
        Command::Import { audience, files } => import(&dir, &audience, &files),
        Command::User { command } => user(&dir, command),
        Command::Verify { id } => verify(&dir, &id),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init(dir: &DataDir, unit: &str, name: &str) -> anyhow::Result<ExitCode> {
    let store = dir.init(Role::Node, unit, name)?;
    let id = dir.node_id()?.context("key was just created")?;
    println!(
        "initialised {} for {} ({}); node id {id}",
        dir.path.display(),
        store.info().name,
        store.info().unit
    );
    Ok(ExitCode::SUCCESS)
}

fn print_id(dir: &DataDir) -> anyhow::Result<ExitCode> {
    match dir.node_id()? {
        Some(id) => {
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        None => bail!(
            "{} has no node key yet: run `cabinet-node init --unit CODE --name NAME`",
            dir.path.display()
        ),
    }
}

fn parse_peers(list: &[String], role: Role) -> anyhow::Result<Vec<(PeerAddr, Role)>> {
    list.iter()
        .map(|p| Ok((p.parse::<PeerAddr>()?, role)))
        .collect()
}

/// Prints the checks of a document's signatures; exits non-zero if one does not hold for
/// the version it signed.
fn verify(dir: &DataDir, id: &str) -> anyhow::Result<ExitCode> {
    let (mut store, _, _) = dir.open(Role::Node)?;
    let id = DocId::parse(id)?;
    let doc = store
        .get(&id)?
        .with_context(|| format!("no document with id {id} in {}", dir.path.display()))?;
    let checks = sync_core::signature::verify_all(&id, doc)?;
    let all_valid = checks.iter().all(|c| c.valid);
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "id": id.as_str(),
            "heads": model::heads_hex(&doc.get_heads()),
            "signatures": checks,
        }))?
    );
    Ok(if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn user(dir: &DataDir, command: UserCommand) -> anyhow::Result<ExitCode> {
    if !dir.is_initialised() {
        bail!(
            "{} has no store yet: run `cabinet-node init --unit CODE` (or `serve`) first",
            dir.path.display()
        );
    }
    let users = Directory::open(&dir.store_path())?;
    match command {
        UserCommand::Add {
            name,
            role,
            full_name,
            title,
        } => {
            let role = UserRole::parse(&role)?;
            // At a terminal the password is asked for without echo; from a pipe it is
            // the first line.
            let password = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                rpassword::prompt_password(format!("password for {name}: "))
                    .context("cannot read the password")?
            } else {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("cannot read the password from standard input")?;
                line.trim_end_matches(['\r', '\n']).to_string()
            };
            let password = password.as_str();
            let user = users.add(&name, role, &full_name, &title, password)?;
            println!(
                "added {} ({}), signing key {}",
                user.name,
                user.role.as_str(),
                user.public_key
            );
        }
        UserCommand::List => {
            for u in users.list()? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    u.name,
                    u.role.as_str(),
                    u.full_name,
                    u.title,
                    u.public_key
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(dir: &DataDir, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let ServeArgs {
        http,
        listen,
        peer: peers,
        relay: relays,
        access,
        cache_documents,
        registrar,
    } = args;
    std::fs::create_dir_all(&dir.path)
        .with_context(|| format!("cannot create {}", dir.path.display()))?;
    // Taken before anything else, so two `serve` on one empty directory cannot both
    // initialise it.
    let _serving = dir.lock_for_serving()?;
    if !dir.is_initialised() {
        let store = dir.init(Role::Node, DEFAULT_UNIT, "")?;
        info!(dir = %dir.path.display(), unit = %store.info().unit, name = %store.info().name,
            "empty data directory: initialised with the default unit");
    }
    let (mut store, key, me) = dir.open(Role::Node)?;
    store.set_cache_capacity(cache_documents);
    let blobs = std::sync::Arc::new(Blobs::open(&dir.attachments_path())?);
    store.set_blobs(blobs.clone());
    let users = Directory::open(&dir.store_path())?;
    let office = office::Office {
        unit: me.unit.clone(),
        registrar,
        org_key: ed25519_dalek::SigningKey::from_bytes(&key.to_bytes()),
    };
    let roster = match &access.roster {
        Some(path) => Roster::load(path)?,
        None => Roster::default(),
    };
    let mut dial = parse_peers(&peers, Role::Node)?;
    dial.extend(parse_peers(&relays, Role::Relay)?);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = service::share(store);
        let net = Net::start(
            key,
            store.clone(),
            NetConfig {
                listen,
                me: me.clone(),
                dial,
                roster,
                roster_keys: access.roster_key,
                mdns: !access.no_mdns,
                blobs,
                attachment_rate: (access.attachment_rate > 0)
                    .then(|| access.attachment_rate * 1024),
            },
        )
        .await?;
        info!(id = %net.id(), unit = %me.unit, registrar, "node started");
        if registrar {
            tokio::spawn(office::registrar_loop(store.clone(), net.id().to_string()));
        }
        let net = std::sync::Arc::new(net);
        let app = api::router(api::AppState {
            store: store.clone(),
            net: net.clone(),
            users: std::sync::Arc::new(std::sync::Mutex::new(users)),
            office: std::sync::Arc::new(office),
            login_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(2)),
        });
        let listener = tokio::net::TcpListener::bind(http)
            .await
            .with_context(|| format!("cannot listen for HTTP on {http}"))?;
        info!(%http, "API and web UI listening");
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown_signal())
        .await?;
        info!("node stopping");
        net.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

/// Imports each file as a new document. A file that is not a document is reported and
/// skipped; it changes nothing.
fn import(dir: &DataDir, audience: &[String], files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let (mut store, key, me) = dir.open(Role::Node)?;
    let audience = audience_with_own_unit(audience, me.unit.as_str())?;
    let progress = indicatif::ProgressBar::new(files.len() as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .expect("template is valid"),
    );
    let mut failed = 0;
    for file in files {
        progress.set_message(file.display().to_string());
        match import_one(
            &mut store,
            &key.public().to_string(),
            &me.unit,
            &audience,
            file,
        ) {
            Ok((id, label)) => {
                progress.suspend(|| println!("imported {} as {id} ({label})", file.display()));
            }
            Err(e) => {
                failed += 1;
                progress.suspend(|| println!("skipped {}: {e:#}", file.display()));
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    println!("{} imported, {failed} skipped", files.len() - failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn audience_with_own_unit(audience: &[String], own: &str) -> anyhow::Result<Vec<String>> {
    let mut out = vec![own.to_string()];
    for code in audience.iter().map(|c| c.trim()).filter(|c| !c.is_empty()) {
        out.push(UnitCode::parse(code)?.to_string());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn import_one(
    store: &mut Store,
    creator: &str,
    unit: &UnitCode,
    audience: &[String],
    file: &std::path::Path,
) -> anyhow::Result<(DocId, String)> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let text = String::from_utf8(bytes).context("the file is not UTF-8 text")?;
    let is_table = file
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let imported = if is_table {
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        sync_core::import::parse_table(&text, stem)?
    } else {
        sync_core::import::parse_document(&text)?
    };
    let patch = DocumentPatch {
        doc_type: imported.doc_type,
        number: imported.number,
        notation: imported.notation,
        issuer: imported.issuer,
        place: imported.place,
        issued_date: imported.issued_date,
        subject: imported.subject,
        body: Some(imported.body),
        imported: true,
        ..Default::default()
    };
    let header = Header {
        kind: Kind::Document,
        unit: unit.to_string(),
        audience: audience.to_vec(),
        created_by: creator.to_string(),
        created_at: model::now_vietnam(),
        confidential: false,
    };
    let doc = model::create_document(&header, &patch)?;
    let id = DocId::new();
    store.put(&id, doc, &[])?;
    let label = format!(
        "{}/{}",
        patch.number.as_deref().unwrap_or("?"),
        patch.notation.as_deref().unwrap_or("?")
    );
    Ok((id, label))
}
