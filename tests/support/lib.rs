//! The harness Cabinet's scenario tests share: real `cabinet-node` and `cabinet-relay`
//! processes in temporary data directories on loopback, started, stopped with SIGTERM,
//! killed with SIGKILL and restarted, and driven through their HTTP API.
//!
//! The binaries come from the same target directory as the test (`cargo build --bins`
//! runs first in the test command). When a test fails, the last lines of every process
//! log are printed.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The shared test data (documents, traces), beside the repository.
pub fn shared_data() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    assert!(
        dir.is_dir(),
        "the shared data directory {} is missing; it sits beside the repository",
        dir.display()
    );
    dir
}

/// Path of a binary built into the same target directory as the running test.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable has a path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test runs from target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (cargo build --bins), as scripts/test does",
        path.display()
    );
    path
}

/// A loopback address with a port free at the time of asking.
pub fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("loopback TCP port")
}

pub fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("loopback UDP port")
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A response: status code and JSON body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Reply, String> {
    let mut r = r.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Reply { status, body })
}

/// Which binary a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Node,
    Relay,
}

/// One Cabinet process with its data directory, restartable with the same arguments.
pub struct Process {
    pub name: String,
    pub kind: Kind,
    pub data: PathBuf,
    pub http: SocketAddr,
    pub listen: SocketAddr,
    pub id: String,
    extra: Vec<String>,
    /// Whether a node announces itself and looks for peers with mDNS (off by default, so
    /// tests send nothing beyond loopback).
    mdns: bool,
    log: PathBuf,
    child: Option<Child>,
    /// Sign-in tokens of the users signed in so far, by user name.
    tokens: std::collections::BTreeMap<String, String>,
    /// The user whose token requests carry, if any.
    acting: Option<String>,
}

impl Process {
    /// Initialises a data directory for `unit` under `root`.
    pub fn init(root: &Path, name: &str, kind: Kind, unit: &str) -> Process {
        let data = root.join(name);
        let bin = binary(match kind {
            Kind::Node => "cabinet-node",
            Kind::Relay => "cabinet-relay",
        });
        let out = Command::new(&bin)
            .args(["--data", data.to_str().unwrap(), "init", "--unit", unit])
            .output()
            .expect("init runs");
        assert!(
            out.status.success(),
            "init {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(&bin)
            .args(["--data", data.to_str().unwrap(), "id"])
            .output()
            .expect("id runs");
        assert!(out.status.success());
        let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Process {
            name: name.into(),
            kind,
            log: root.join(format!("{name}.log")),
            data,
            http: free_tcp(),
            listen: free_udp(),
            id,
            extra: Vec::new(),
            mdns: false,
            child: None,
            tokens: Default::default(),
            acting: None,
        }
    }

    fn bin(&self) -> PathBuf {
        binary(match self.kind {
            Kind::Node => "cabinet-node",
            Kind::Relay => "cabinet-relay",
        })
    }

    /// `ID@127.0.0.1:PORT`, for another process's `--relay`, `--peer` or `--upstream`.
    pub fn addr(&self) -> String {
        format!("{}@{}", self.id, self.listen)
    }

    /// Arguments added to `serve` (peers, relays, roster).
    pub fn with_args(&mut self, args: &[&str]) -> &mut Self {
        self.extra.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Lets a node find peers on the LAN with mDNS; for tests inside a network namespace.
    pub fn with_mdns(&mut self) -> &mut Self {
        self.mdns = true;
        self
    }

    /// Runs another subcommand on the same data directory and returns its output.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.bin())
            .arg("--data")
            .arg(&self.data)
            .args(args)
            .output()
            .expect("subcommand runs")
    }

    /// Creates a user with `user add` (password `password of NAME`).
    pub fn add_user(&self, name: &str, role: &str, full_name: &str, title: &str) {
        let mut child = Command::new(self.bin())
            .arg("--data")
            .arg(&self.data)
            .args([
                "user",
                "add",
                name,
                "--role",
                role,
                "--full-name",
                full_name,
            ])
            .args(["--title", title])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("user add runs");
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "password of {name}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "user add {name} on {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Sends the following requests as `user` (signing in the first time), or as nobody.
    pub fn act_as(&mut self, user: Option<&str>) -> &mut Self {
        self.acting = None;
        if let Some(user) = user {
            if !self.tokens.contains_key(user) {
                let r = self
                    .try_post(
                        "/api/v1/login",
                        &serde_json::json!({ "user": user, "password": format!("password of {user}") }),
                    )
                    .unwrap_or_else(|e| panic!("login on {}: {e}", self.name));
                assert_eq!(r.status, 200, "login {user} on {}: {}", self.name, r.body);
                let token = r.body["token"].as_str().expect("a token").to_string();
                self.tokens.insert(user.to_string(), token);
            }
            self.acting = Some(user.to_string());
        }
        self
    }

    fn authorization(&self) -> Option<String> {
        let user = self.acting.as_ref()?;
        Some(format!("Bearer {}", self.tokens.get(user)?))
    }

    /// A lifecycle action on document `id` as the acting user; the reply, whatever it is.
    pub fn try_action(&self, id: &str, body: &Value) -> Reply {
        self.try_post(&format!("/api/v1/documents/{id}/actions"), body)
            .unwrap_or_else(|e| panic!("action on {}: {e}", self.name))
    }

    /// A lifecycle action that must succeed; returns the document.
    pub fn action(&self, id: &str, action: &str, extra: Value) -> Value {
        let mut body = serde_json::json!({ "action": action });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let r = self.try_action(id, &body);
        assert_eq!(r.status, 200, "{action} on {}: {}", self.name, r.body);
        r.body
    }

    /// Starts `serve` and waits until the API answers. Sign-in tokens do not survive a
    /// restart: the next request as a user signs in again.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        self.tokens.clear();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(self.bin())
            .arg("--data")
            .arg(&self.data)
            .arg("serve")
            .arg("--http")
            .arg(self.http.to_string())
            .arg("--listen")
            .arg(self.listen.to_string())
            .args(&self.extra)
            .args((self.kind == Kind::Node && !self.mdns).then_some("--no-mdns"))
            .env("RUST_LOG", "info,iroh=warn,noq=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("serve starts");
        self.child = Some(child);
        let name = self.name.clone();
        wait_for(
            &format!("{name} to answer"),
            Duration::from_secs(30),
            || {
                if let Some(c) = self.child.as_mut()
                    && let Ok(Some(status)) = c.try_wait()
                {
                    panic!(
                        "{name} exited during start-up ({status}); log:\n{}",
                        self.log_tail(40)
                    );
                }
                self.try_get("/api/v1/status")
                    .ok()
                    .filter(|r| r.status == 200)
            },
        );
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// Any request, with the headers given and nothing else added but `Host`.
    pub fn try_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, String> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body.to_string()).map_err(|e| e.to_string())?;
        reply(agent().run(request))
    }

    pub fn try_get(&self, path: &str) -> Result<Reply, String> {
        let mut r = agent().get(&self.url(path));
        if let Some(auth) = self.authorization() {
            r = r.header("Authorization", &auth);
        }
        reply(r.call())
    }

    pub fn try_post(&self, path: &str, body: &Value) -> Result<Reply, String> {
        let mut r = agent().post(&self.url(path));
        if let Some(auth) = self.authorization() {
            r = r.header("Authorization", &auth);
        }
        reply(r.send_json(body))
    }

    pub fn try_patch(&self, path: &str, body: &Value) -> Result<Reply, String> {
        let mut r = agent().patch(&self.url(path));
        if let Some(auth) = self.authorization() {
            r = r.header("Authorization", &auth);
        }
        reply(r.send_json(body))
    }

    pub fn try_delete(&self, path: &str) -> Result<Reply, String> {
        let mut r = agent().delete(&self.url(path));
        if let Some(auth) = self.authorization() {
            r = r.header("Authorization", &auth);
        }
        reply(r.call())
    }

    /// POST of raw bytes (a file upload) with its media type; the reply, whatever it is.
    pub fn try_upload(&self, path: &str, bytes: &[u8], media_type: &str) -> Result<Reply, String> {
        let mut r = agent()
            .post(&self.url(path))
            .header("Content-Type", media_type);
        if let Some(auth) = self.authorization() {
            r = r.header("Authorization", &auth);
        }
        reply(r.send(bytes))
    }

    /// GET of raw bytes (a file download): status and body, whatever they are.
    pub fn try_download(&self, path: &str) -> Result<(u16, Vec<u8>), String> {
        let mut r = agent().get(&self.url(path));
        if let Some(auth) = self.authorization() {
            r = r.header("Authorization", &auth);
        }
        let mut response = r.call().map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        Ok((status, bytes))
    }

    /// A value of the Prometheus text a relay serves at `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let r = agent()
            .get(&self.url("/metrics"))
            .call()
            .unwrap_or_else(|e| panic!("metrics of {}: {e}", self.name))
            .body_mut()
            .read_to_string()
            .expect("metrics text");
        r.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{} serves no metric {name}", self.name))
    }

    /// GET that must succeed with 200.
    pub fn get(&self, path: &str) -> Value {
        let r = self
            .try_get(path)
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", self.name));
        assert_eq!(r.status, 200, "GET {path} on {}: {}", self.name, r.body);
        r.body
    }

    /// POST that must succeed with 201.
    pub fn post(&self, path: &str, body: &Value) -> Value {
        let r = self
            .try_post(path, body)
            .unwrap_or_else(|e| panic!("POST {path} on {}: {e}", self.name));
        assert_eq!(r.status, 201, "POST {path} on {}: {}", self.name, r.body);
        r.body
    }

    /// PATCH that must succeed with 200.
    pub fn patch(&self, path: &str, body: &Value) -> Value {
        let r = self
            .try_patch(path, body)
            .unwrap_or_else(|e| panic!("PATCH {path} on {}: {e}", self.name));
        assert_eq!(r.status, 200, "PATCH {path} on {}: {}", self.name, r.body);
        r.body
    }

    /// Every document the node lists (all pages).
    pub fn documents(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                Some(a) => format!("/api/v1/documents?limit=1000&after={a}"),
                None => "/api/v1/documents?limit=1000".to_string(),
            };
            let page = self.get(&path);
            out.extend(page["documents"].as_array().cloned().unwrap_or_default());
            match page["next"].as_str() {
                Some(n) => after = Some(n.to_string()),
                None => return out,
            }
        }
    }

    /// The id of every record in the process's store file, read from disk (a running
    /// process's committed writes included).
    pub fn stored_ids(&self) -> std::collections::BTreeSet<String> {
        let db = self.data.join("store.db");
        if !db.exists() {
            return Default::default();
        }
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("store opens read-only");
        conn.busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        let mut stmt = conn.prepare("SELECT id FROM records").expect("query");
        stmt.query_map([], |r| r.get::<_, String>(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("ids")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- last log lines of {} ----\n{}",
                self.name,
                self.log_tail(30)
            );
        }
        self.kill();
    }
}

/// A roster in the contract's format listing `members` as (process, unit), each with its
/// process's role, and revoking `revoked` (the list comes first, as TOML needs).
pub fn roster_text(members: &[(&Process, &str)], revoked: &[&Process]) -> String {
    let mut text = String::new();
    if !revoked.is_empty() {
        let ids: Vec<String> = revoked.iter().map(|p| format!("\"{}\"", p.id)).collect();
        text.push_str(&format!("revoked = [{}]\n\n", ids.join(", ")));
    }
    for (p, unit) in members {
        let role = match p.kind {
            Kind::Node => "node",
            Kind::Relay => "relay",
        };
        text.push_str(&format!(
            "[[member]]\nid = \"{}\"\nunit = \"{unit}\"\nrole = \"{role}\"\n\n",
            p.id
        ));
    }
    text
}

/// Writes a roster listing `members` as (process, unit) and returns its path.
pub fn roster(root: &Path, name: &str, members: &[(&Process, &str)]) -> PathBuf {
    let path = root.join(name);
    std::fs::write(&path, roster_text(members, &[])).expect("roster written");
    path
}

/// Relay R for cluster 42-445 (former Huyện Thạch Hà, Hà Tĩnh), node A for Xã Thạch Hà
/// (18562) and node B for Xã Lộc Hà (18568), both of that cluster, each with R as relay.
/// Nothing is started.
pub struct ThreeSites {
    pub root: tempfile::TempDir,
    pub r: Process,
    pub a: Process,
    pub b: Process,
}

pub const UNIT_A: &str = "18562";
pub const UNIT_B: &str = "18568";
pub const CLUSTER: &str = "42-445";

impl ThreeSites {
    pub fn new() -> ThreeSites {
        let root = tempfile::tempdir().expect("temp dir");
        let mut r = Process::init(root.path(), "relay-R", Kind::Relay, CLUSTER);
        let mut a = Process::init(root.path(), "node-A", Kind::Node, UNIT_A);
        let mut b = Process::init(root.path(), "node-B", Kind::Node, UNIT_B);
        let roster = roster(root.path(), "roster.toml", &[(&a, UNIT_A), (&b, UNIT_B)]);
        r.with_args(&["--roster", roster.to_str().unwrap()]);
        let relay = r.addr();
        a.with_args(&["--relay", &relay]);
        b.with_args(&["--relay", &relay]);
        ThreeSites { root, r, a, b }
    }

    pub fn start_all(&mut self) {
        self.r.start();
        self.a.start();
        self.b.start();
    }

    /// Creates a document on A with `fields`, shared with B, and waits until B holds
    /// it; returns the document as A answered.
    pub fn shared_from_a(&self, fields: Value) -> Value {
        let mut fields = fields;
        fields["audience"] = serde_json::json!([UNIT_B]);
        let created = self.a.post("/api/v1/documents", &fields);
        let path = format!("/api/v1/documents/{}", created["id"].as_str().unwrap());
        wait_for("B to receive the document", Duration::from_secs(30), || {
            self.b.try_get(&path).ok().filter(|r| r.status == 200)
        });
        created
    }
}

impl Default for ThreeSites {
    fn default() -> Self {
        ThreeSites::new()
    }
}

/// What a burst of writes was told had committed.
#[derive(Debug, Default)]
pub struct Acknowledged {
    /// Tokens inserted at the start of the edited document's body.
    pub tokens: Vec<String>,
    /// Ids of the documents created.
    pub created: Vec<String>,
}

/// Edits `doc` on the node at `http` (a token inserted at the start of its body) and
/// creates a document visible to `audience` every fourth edit, as fast as the node
/// answers, until the node stops answering or `stop` says so. Returns what the node
/// acknowledged; any refusal (a 4xx or 5xx) fails the test.
pub fn write_burst(
    http: SocketAddr,
    doc: &str,
    label: &str,
    audience: &str,
    stop: impl Fn() -> bool,
) -> Acknowledged {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut acked = Acknowledged::default();
    for i in 0.. {
        if stop() {
            break;
        }
        let token = format!("⟨{label}.{i}⟩");
        let r = agent
            .patch(&format!("http://{http}/api/v1/documents/{doc}"))
            .send_json(serde_json::json!({
                "body_splice": { "pos": 0, "delete": 0, "insert": token }
            }));
        match r {
            Ok(resp) if resp.status() == 200 => acked.tokens.push(token),
            Ok(resp) => panic!("edit refused with {}", resp.status()),
            Err(_) => break,
        }
        if i % 4 == 0 {
            let r = agent
                .post(&format!("http://{http}/api/v1/documents"))
                .send_json(serde_json::json!({
                    "subject": format!("Văn bản {label}.{i}"),
                    "audience": [audience],
                }));
            match r {
                Ok(mut resp) if resp.status() == 201 => {
                    let v: Value = resp.body_mut().read_json().expect("JSON reply");
                    acked
                        .created
                        .push(v["id"].as_str().expect("an id").to_string());
                }
                Ok(resp) => panic!("create refused with {}", resp.status()),
                Err(_) => break,
            }
        }
    }
    acked
}

impl Acknowledged {
    pub fn extend(&mut self, other: Acknowledged) {
        self.tokens.extend(other.tokens);
        self.created.extend(other.created);
    }

    /// Does `node` hold every acknowledged write (the tokens in `doc`'s body, and every
    /// created document)?
    pub fn all_on(&self, node: &Process, doc: &str) -> bool {
        let Ok(r) = node.try_get(&format!("/api/v1/documents/{doc}")) else {
            return false;
        };
        let body = r.body["body"].as_str().unwrap_or_default().to_string();
        self.tokens.iter().all(|t| body.contains(t.as_str()))
            && self.created.iter().all(|id| {
                node.try_get(&format!("/api/v1/documents/{id}"))
                    .is_ok_and(|r| r.status == 200)
            })
    }
}
