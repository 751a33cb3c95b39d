//! The data directory and the parts of running a node or relay that both binaries share.
//!
//! A data directory holds the secret key in `node.key` and the store in `store.db` (plus
//! SQLite's own files); backing up a node or relay is copying that directory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use iroh::SecretKey;
use serde_json::{Value as Json, json};

use crate::identity::{self, IdentityError};
use crate::model::{DocId, Kind};
use crate::net::{Net, SharedStore};
use crate::policy::{Member, Role};
use crate::store::{ListFilter, Store, StoreError};
use crate::units::{Level, UnitCode, UnitError};

/// The file name of the store inside a data directory.
pub const STORE_FILE: &str = "store.db";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    #[error(transparent)]
    Unit(#[from] UnitError),
    #[error("{unit} is a {level}; a {role} belongs to {expected}")]
    WrongLevel {
        unit: String,
        level: &'static str,
        role: &'static str,
        expected: &'static str,
    },
    #[error("{dir} is already initialised for unit {unit} ({name})")]
    AlreadyInitialised {
        dir: String,
        unit: String,
        name: String,
    },
    #[error("{dir} has no store yet: run `init --unit CODE --name NAME` first")]
    NotInitialised { dir: String },
    #[error("cannot create {dir}: {reason}")]
    CreateDir { dir: String, reason: std::io::Error },
    #[error("the store's unit {0:?} is not in the national list")]
    StoreUnit(String),
    #[error("{dir} holds a {found}'s data, not a {expected}'s: use cabinet-{found} for it")]
    WrongRole {
        dir: String,
        found: String,
        expected: &'static str,
    },
    #[error(
        "{dir} is already being served by another process (stop it first, or give this one \
         its own --data directory)"
    )]
    InUse { dir: String },
    #[error("cannot lock {path}: {reason}")]
    Lock {
        path: String,
        reason: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Commune => "commune",
        Level::Cluster => "cluster",
        Level::Province => "province",
        Level::National => "the nation",
    }
}

/// Checks that a unit code suits a role: a node serves a commune or a province office, a
/// relay a cluster, a province or the nation.
pub fn unit_for(role: Role, code: &str) -> Result<UnitCode, ServiceError> {
    let unit = UnitCode::parse(code)?;
    let ok = match role {
        Role::Node => matches!(unit.level(), Level::Commune | Level::Province),
        Role::Relay => matches!(
            unit.level(),
            Level::Cluster | Level::Province | Level::National
        ),
    };
    if !ok {
        return Err(ServiceError::WrongLevel {
            unit: unit.to_string(),
            level: level_name(unit.level()),
            role: role.as_str(),
            expected: match role {
                Role::Node => "a commune (5 digits) or a province (2 digits)",
                Role::Relay => "a cluster (PP-DDD), a province (2 digits) or VN",
            },
        });
    }
    Ok(unit)
}

/// Held by the one process serving a data directory; the lock goes with the process.
pub struct ServeLock {
    _file: std::fs::File,
}

/// A data directory: where the key and the store live.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub path: PathBuf,
}

impl DataDir {
    pub fn new(path: impl Into<PathBuf>) -> DataDir {
        DataDir { path: path.into() }
    }

    /// Where attachment files are kept (see [`crate::blobs`]).
    pub fn attachments_path(&self) -> PathBuf {
        self.path.join("attachments")
    }

    pub fn store_path(&self) -> PathBuf {
        self.path.join(STORE_FILE)
    }

    pub fn is_initialised(&self) -> bool {
        self.store_path().exists()
    }

    /// Creates the key and the store for `unit`. Refuses a directory that already holds
    /// a store, so a slip of the keyboard never re-assigns a node to another unit.
    pub fn init(&self, role: Role, unit: &str, name: &str) -> Result<Store, ServiceError> {
        let unit = unit_for(role, unit)?;
        if self.is_initialised() {
            let store = Store::open(&self.store_path())?;
            return Err(ServiceError::AlreadyInitialised {
                dir: self.path.display().to_string(),
                unit: store.info().unit.clone(),
                name: store.info().name.clone(),
            });
        }
        std::fs::create_dir_all(&self.path).map_err(|reason| ServiceError::CreateDir {
            dir: self.path.display().to_string(),
            reason,
        })?;
        identity::load_or_create(&self.path)?;
        let name = if name.trim().is_empty() {
            unit.name()
        } else {
            name.trim().to_string()
        };
        let mut store = Store::create(&self.store_path(), unit.as_str(), &name)?;
        store.set_role(role.as_str())?;
        Ok(store)
    }

    /// Takes the directory for one serving process: a second `serve` on it (the same
    /// key answering twice, two writers of one store) is refused while this is held.
    pub fn lock_for_serving(&self) -> Result<ServeLock, ServiceError> {
        let path = self.path.join("serve.lock");
        let lock_err = |reason| ServiceError::Lock {
            path: path.display().to_string(),
            reason,
        };
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(lock_err)?;
        match file.try_lock() {
            Ok(()) => Ok(ServeLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(ServiceError::InUse {
                dir: self.path.display().to_string(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(lock_err(e)),
        }
    }

    /// Opens the store and key of an initialised directory.
    pub fn open(&self, role: Role) -> Result<(Store, SecretKey, Member), ServiceError> {
        if !self.is_initialised() {
            return Err(ServiceError::NotInitialised {
                dir: self.path.display().to_string(),
            });
        }
        let store = Store::open(&self.store_path())?;
        if let Some(found) = store.info().role.as_deref()
            && found != role.as_str()
        {
            return Err(ServiceError::WrongRole {
                dir: self.path.display().to_string(),
                found: found.to_string(),
                expected: role.as_str(),
            });
        }
        let key = identity::load_or_create(&self.path)?;
        let unit = UnitCode::parse(&store.info().unit)
            .map_err(|_| ServiceError::StoreUnit(store.info().unit.clone()))?;
        Ok((store, key, Member { unit, role }))
    }

    /// The node id, if the directory has a key.
    pub fn node_id(&self) -> Result<Option<iroh::EndpointId>, ServiceError> {
        Ok(identity::load(&self.path)?.map(|k| k.public()))
    }
}

/// The status document both binaries serve at `/api/v1/status`.
pub fn status_json(store: &SharedStore, net: &Net) -> Result<Json, StoreError> {
    let (unit, name, documents, records, wanted) = {
        let s = lock(store);
        (
            s.info().unit.clone(),
            s.info().name.clone(),
            s.count()?,
            s.peers()?,
            s.wanted_attachment_count()?,
        )
    };
    let counters = &net.blobs().counters;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let attachments = json!({
        "waiting": wanted,
        "bytes_sent": load(&counters.bytes_sent),
        "bytes_received": load(&counters.bytes_received),
        "completed": load(&counters.completed),
        "corrupt_transfers": load(&counters.corrupt),
    });
    let status = net.status();
    let (revoked, rosters): (Vec<bool>, Vec<Json>) = net.with_trust(|trust| {
        let revoked = status.iter().map(|p| trust.is_revoked(&p.id)).collect();
        let rosters = trust
            .signed()
            .map(|r| {
                json!({
                    "issuer": r.issuer.to_string(),
                    "unit": r.unit.to_string(),
                    "version": r.version,
                    "issued_at": r.issued_at,
                    "members": r.roster.len(),
                    "revoked": r.roster.revoked_len(),
                })
            })
            .collect();
        (revoked, rosters)
    });
    let peers: Vec<Json> = status
        .into_iter()
        .zip(revoked)
        .map(|(p, revoked)| {
            let stored = records.iter().find(|(id, _)| *id == p.id).map(|(_, r)| r);
            let tier = p
                .unit
                .as_deref()
                .and_then(|u| UnitCode::parse(u).ok())
                .map(|u| level_name(u.level()));
            json!({
                "id": p.id,
                "unit": p.unit,
                "tier": tier,
                "role": p.role,
                "revoked": revoked,
                "connected": p.connected,
                "last_sync": p.last_sync.or_else(|| stored.and_then(|r| r.last_sync.clone())),
                "pending_out": p.pending_out,
                "pending_in": p.pending_in,
                "bytes_in": p.bytes_in,
                "bytes_out": p.bytes_out,
            })
        })
        .collect();
    Ok(json!({
        "node_id": net.id().to_string(),
        "unit": unit,
        "name": name,
        "documents": documents,
        "peers": peers,
        "rosters": rosters,
        "attachments": attachments,
    }))
}

/// One page of a listing in the contract's shape: `{ "documents": [...], "next" }`.
pub fn list_page(
    store: &Store,
    kind: Option<Kind>,
    after: Option<&DocId>,
    limit: usize,
    include_deleted: bool,
    filter: &ListFilter<'_>,
) -> Result<Json, StoreError> {
    let docs = store.list_filtered(kind, after, limit, include_deleted, filter)?;
    let next = if docs.len() == limit {
        docs.last()
            .and_then(|d| d["id"].as_str())
            .map(str::to_string)
    } else {
        None
    };
    Ok(json!({ "documents": docs, "next": next }))
}

/// Locks a shared store; a panic elsewhere while it was held leaves it usable, since
/// every write is a transaction.
pub fn lock(store: &SharedStore) -> std::sync::MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(|p| p.into_inner())
}

/// Wraps a store for sharing between the HTTP API and sync sessions.
pub fn share(store: Store) -> SharedStore {
    Arc::new(Mutex::new(store))
}

/// Logs to stderr; `RUST_LOG` overrides the default level (info).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,iroh=warn,noq=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// The default data directory of a binary, relative to the working directory.
pub fn default_dir(role: Role) -> &'static Path {
    Path::new(match role {
        Role::Node => "./cabinet-data",
        Role::Relay => "./cabinet-relay-data",
    })
}
