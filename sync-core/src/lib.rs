//! Cabinet's engine, shared by the commune node (`cabinet-node`) and the relay
//! (`cabinet-relay`).
//!
//! A map of the modules, in the order data flows through them:
//!
//! - [`units`]: the national list of communes and provinces, and the relay tree built on
//!   it (commune → cluster → province → nation).
//! - [`model`]: records (documents, annotations) as automerge documents with typed access.
//! - [`blobs`]: attachment files by BLAKE3 hash, verified and resumable transfers.
//! - [`store`]: durable SQLite storage with sequence numbers, cursors, per-peer sync
//!   states and a bounded document cache.
//! - [`search`]: ranked full-text search results with highlighted snippets.
//! - [`lifecycle`]: the steps of an official document, registers and numbering, and the
//!   exchange of documents between units.
//! - [`signature`]: signatures over document versions, checked offline.
//! - [`users`]: a node's users, roles, passwords and sign-in tokens.
//! - [`policy`]: who may hold, receive and write which record.
//! - [`roster`]: which node ids take part, with their unit and role; signed rosters.
//! - [`protocol`]: the sync protocol as a sans-IO state machine.
//! - [`net`]: iroh endpoints and the tasks that run protocol sessions over QUIC.
//! - [`import`]: reading official documents from Markdown or text files.
//! - [`identity`]: the node key kept in the data directory.
//! - [`service`]: the data directory, status and logging shared by both binaries.
//! - [`determinism`]: the clock and randomness, seeded in simulations.
//!
//! `net`, `identity`, `service` and rosters come with the `net` feature (on by default);
//! without it the crate is the engine alone, which is what the fuzz targets build.

pub mod blobs;
pub mod determinism;
#[cfg(feature = "net")]
pub mod identity;
pub mod import;
pub mod lifecycle;
pub mod model;
#[cfg(feature = "net")]
pub mod net;
pub mod policy;
pub mod protocol;
#[cfg(feature = "net")]
pub mod roster;
pub mod search;
#[cfg(feature = "net")]
pub mod service;
pub mod signature;
pub mod store;
pub mod units;
pub mod users;
