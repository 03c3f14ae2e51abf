//! A hub on 127.0.0.1 for the tests: the subset of the Hugging Face hub's HTTP protocol that
//! hf-hub 1.0 uses (see `shared/reference/candle.md` §4.3).
//!
//! - `HEAD|GET /{owner}/{name}/resolve/{revision}/{path}`: `ETag` (the sha256 for
//!   `.safetensors`, as the hub sends for LFS files; 40 hex digits otherwise), `X-Repo-Commit`,
//!   `Content-Length`; 304 on a matching `If-None-Match`; 404 with `X-Repo-Commit` for a
//!   missing file.
//! - `GET /api/models/{owner}/{name}/revision/{revision}` and `.../tree/{commit}`.
//! - The same for data set repositories (created with [`MockHub::put_dataset`]):
//!   `HEAD|GET /datasets/{owner}/{name}/resolve/...`, `GET /api/datasets/{owner}/{name}/...`.
//! - `POST /api/repos/create`, `.../preupload/{revision}` (every file "regular") and
//!   `.../commit/{revision}` (NDJSON with base64 contents).
//!
//! Every connection is answered with `Connection: close`; faults can be injected per file: a
//! GET cut after half the body, or a GET answered with a 500.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

/// One commit: its id and the files it holds.
#[derive(Clone, Default)]
struct Commit {
    sha: String,
    files: BTreeMap<String, Vec<u8>>,
}

#[derive(Default)]
struct Repo {
    private: bool,
    commits: Vec<Commit>,
    /// Other references (`refs/convert/parquet`, tags), each on a commit of its own.
    refs: BTreeMap<String, Commit>,
}

impl Repo {
    fn head(&self) -> Option<&Commit> {
        self.commits.last()
    }

    /// The commit a revision names: a reference, `main` or a commit id.
    fn at(&self, revision: &str) -> Option<&Commit> {
        if let Some(c) = self.refs.get(revision) {
            Some(c)
        } else if revision == "main" {
            self.head()
        } else {
            self.commits
                .iter()
                .chain(self.refs.values())
                .find(|c| c.sha == revision)
        }
    }
}

#[derive(Default)]
struct State {
    repos: BTreeMap<String, Repo>,
    log: Vec<String>,
    cut: BTreeSet<String>,
    fail: BTreeSet<String>,
    token: Option<String>,
    authorizations: Vec<String>,
}

/// The running server; stopped when dropped.
pub struct MockHub {
    url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    port: u16,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of bytes, as hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The `ETag` the hub gives a file.
fn etag(path: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    if path.ends_with(".safetensors") {
        digest
    } else {
        digest[..40].to_string()
    }
}

impl MockHub {
    /// Start a server on a free port of 127.0.0.1.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let state = Arc::clone(&state);
                        std::thread::spawn(move || serve(stream, &state));
                    }
                }
            })
        };
        Self {
            url: format!("http://127.0.0.1:{port}"),
            state,
            stop,
            thread: Some(thread),
            port,
        }
    }

    /// The endpoint to give the client.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Require this bearer token on uploads.
    pub fn require_token(&self, token: &str) {
        self.state.lock().unwrap().token = Some(token.to_string());
    }

    /// Create `repo` (or add a commit to it) holding `files`; returns the commit id.
    pub fn put(&self, repo: &str, files: &[(&str, &[u8])]) -> String {
        let mut state = self.state.lock().unwrap();
        let entry = state.repos.entry(repo.to_string()).or_default();
        let mut commit = entry.head().cloned().unwrap_or_default();
        for (path, bytes) in files {
            commit.files.insert(path.to_string(), bytes.to_vec());
        }
        commit.sha = commit_id(&entry.commits, &commit.files);
        entry.commits.push(commit.clone());
        commit.sha
    }

    /// Create the data set repository `repo` (or add a commit to it) holding `files`; returns
    /// the commit id.
    pub fn put_dataset(&self, repo: &str, files: &[(&str, &[u8])]) -> String {
        self.put(&format!("datasets/{repo}"), files)
    }

    /// Point `reference` of the data set repository `repo` at a new commit holding exactly
    /// `files` (as the hub's `refs/convert/parquet` branch); `main` is unchanged.
    pub fn put_dataset_ref(&self, repo: &str, reference: &str, files: &[(&str, &[u8])]) -> String {
        let mut state = self.state.lock().unwrap();
        let entry = state.repos.entry(format!("datasets/{repo}")).or_default();
        let mut commit = Commit::default();
        for (path, bytes) in files {
            commit.files.insert(path.to_string(), bytes.to_vec());
        }
        commit.sha = commit_id(&entry.commits, &commit.files);
        entry.refs.insert(reference.to_string(), commit.clone());
        commit.sha
    }

    /// A file of the head commit of `repo`.
    pub fn file(&self, repo: &str, path: &str) -> Option<Vec<u8>> {
        let state = self.state.lock().unwrap();
        state.repos.get(repo)?.head()?.files.get(path).cloned()
    }

    /// Whether `repo` exists and is private.
    pub fn is_private(&self, repo: &str) -> Option<bool> {
        self.state
            .lock()
            .unwrap()
            .repos
            .get(repo)
            .map(|r| r.private)
    }

    /// Cut GETs of files named `path` after half their body.
    pub fn cut(&self, path: &str) {
        self.state.lock().unwrap().cut.insert(path.to_string());
    }

    /// Answer GETs of files named `path` with a 500.
    pub fn fail(&self, path: &str) {
        self.state.lock().unwrap().fail.insert(path.to_string());
    }

    /// Serve every file normally again.
    pub fn heal(&self) {
        let mut state = self.state.lock().unwrap();
        state.cut.clear();
        state.fail.clear();
    }

    /// Requests so far, as `METHOD /path`.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// How many requests start with `prefix` (`"GET /o/n/resolve/"`, ...).
    pub fn count(&self, prefix: &str) -> usize {
        self.log().iter().filter(|l| l.starts_with(prefix)).count()
    }

    /// The `Authorization` headers received.
    pub fn authorizations(&self) -> Vec<String> {
        self.state.lock().unwrap().authorizations.clone()
    }

    /// Stop serving: the port refuses connections afterwards.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(("127.0.0.1", self.port));
            thread.join().unwrap();
        }
    }
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A 40-hex commit id from the history and the tree.
fn commit_id(history: &[Commit], files: &BTreeMap<String, Vec<u8>>) -> String {
    let mut h = Sha256::new();
    h.update(history.len().to_le_bytes());
    for (path, bytes) in files {
        h.update(path.as_bytes());
        h.update(sha256(bytes).as_bytes());
    }
    hex(&h.finalize())[..40].to_string()
}

struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    let path = target.split('?').next().unwrap_or("").to_string();
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

/// Decode `%XX` escapes.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes, then close (a cut transfer).
    cut_at: Option<usize>,
    /// A HEAD: announce the length, send no body.
    head: bool,
}

impl Response {
    fn new(status: u16, body: Vec<u8>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body,
            cut_at: None,
            head: false,
        }
    }
    fn json(status: u16, value: serde_json::Value) -> Self {
        Self::new(status, value.to_string().into_bytes()).header("Content-Type", "application/json")
    }
    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
}

fn write_response(mut stream: &TcpStream, r: Response) {
    let reason = match r.status {
        200 => "OK",
        304 => "Not Modified",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        500 => "Internal Server Error",
        _ => "Other",
    };
    let mut out = format!("HTTP/1.1 {} {reason}\r\nConnection: close\r\n", r.status);
    for (k, v) in &r.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if r.status != 304 {
        out.push_str(&format!("Content-Length: {}\r\n", r.body.len()));
    }
    out.push_str("\r\n");
    let _ = stream.write_all(out.as_bytes());
    if !r.head && r.status != 304 {
        let n = r.cut_at.unwrap_or(r.body.len());
        let _ = stream.write_all(&r.body[..n]);
    }
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let Some(req) = read_request(&stream) else {
        return;
    };
    let response = {
        let mut state = state.lock().unwrap();
        state.log.push(format!("{} {}", req.method, req.path));
        if let Some(auth) = req.headers.get("authorization") {
            state.authorizations.push(auth.clone());
        }
        route(&mut state, &req)
    };
    write_response(&stream, response);
}

fn not_found(code: &str) -> Response {
    Response::json(404, serde_json::json!({ "error": code })).header("X-Error-Code", code)
}

fn route(state: &mut State, req: &Request) -> Response {
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    // A data set repository is stored under `datasets/owner/name`: strip the type from the
    // path and put it back on the repository's key.
    let (prefix, segments) = match segments.as_slice() {
        ["datasets", rest @ ..] => ("datasets/", rest.to_vec()),
        ["api", "datasets", rest @ ..] => ("datasets/", [&["api", "models"][..], rest].concat()),
        _ => ("", segments),
    };
    match (req.method.as_str(), segments.as_slice()) {
        ("HEAD" | "GET", [owner, name, "resolve", revision, file @ ..]) => {
            let repo = format!("{prefix}{owner}/{name}");
            let file = file
                .iter()
                .map(|s| percent_decode(s))
                .collect::<Vec<_>>()
                .join("/");
            resolve(state, req, &repo, &percent_decode(revision), &file)
        }
        ("GET", ["api", "models", owner, name, "revision", revision]) => {
            let repo = format!("{prefix}{owner}/{name}");
            let Some(r) = state.repos.get(&repo) else {
                return not_found("RepoNotFound");
            };
            match r.at(&percent_decode(revision)) {
                Some(c) => Response::json(
                    200,
                    serde_json::json!({
                        "id": repo.trim_start_matches(prefix),
                        "sha": c.sha,
                        "siblings": c.files.keys().map(|f| serde_json::json!({"rfilename": f})).collect::<Vec<_>>(),
                    }),
                ),
                None => not_found("RevisionNotFound"),
            }
        }
        ("GET", ["api", "models", owner, name, "tree", revision, ..]) => {
            let repo = format!("{prefix}{owner}/{name}");
            match state
                .repos
                .get(&repo)
                .and_then(|r| r.at(&percent_decode(revision)))
            {
                Some(c) => Response::json(
                    200,
                    c.files
                        .iter()
                        .map(|(path, bytes)| {
                            serde_json::json!({
                                "type": "file",
                                "oid": etag(path, bytes),
                                "size": bytes.len(),
                                "path": path,
                            })
                        })
                        .collect(),
                ),
                None => not_found("RevisionNotFound"),
            }
        }
        ("POST", ["api", "repos", "create"]) => {
            if let Some(r) = unauthorized(state, req) {
                return r;
            }
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let name = body["name"].as_str().unwrap_or_default();
            let repo = match body["organization"].as_str() {
                Some(org) => format!("{org}/{name}"),
                None => name.to_string(),
            };
            if state.repos.contains_key(&repo) {
                return Response::json(409, serde_json::json!({"error": "already exists"}));
            }
            state.repos.insert(
                repo.clone(),
                Repo {
                    private: body["private"].as_bool().unwrap_or(false),
                    ..Repo::default()
                },
            );
            Response::json(200, serde_json::json!({ "url": format!("/{repo}") }))
        }
        ("POST", ["api", "models", owner, name, "preupload", _]) => {
            if let Some(r) = unauthorized(state, req) {
                return r;
            }
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let files: Vec<serde_json::Value> = body["files"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| serde_json::json!({"path": f["path"], "uploadMode": "regular"}))
                .collect();
            let _ = (owner, name);
            Response::json(200, serde_json::json!({ "files": files }))
        }
        ("POST", ["api", "models", owner, name, "commit", _]) => {
            if let Some(r) = unauthorized(state, req) {
                return r;
            }
            commit(state, &format!("{owner}/{name}"), &req.body)
        }
        _ => not_found("NotFound"),
    }
}

fn unauthorized(state: &State, req: &Request) -> Option<Response> {
    let expected = state.token.as_ref()?;
    let given = req.headers.get("authorization");
    (given != Some(&format!("Bearer {expected}")))
        .then(|| Response::json(401, serde_json::json!({"error": "Invalid credentials"})))
}

fn resolve(state: &State, req: &Request, repo: &str, revision: &str, file: &str) -> Response {
    let Some(r) = state.repos.get(repo) else {
        return not_found("RepoNotFound");
    };
    let Some(commit) = r.at(revision) else {
        return not_found("RevisionNotFound");
    };
    let Some(bytes) = commit.files.get(file) else {
        return not_found("EntryNotFound").header("X-Repo-Commit", &commit.sha);
    };
    let tag = etag(file, bytes);
    let quoted = format!("\"{tag}\"");
    if req.headers.get("if-none-match") == Some(&quoted) {
        return Response::new(304, Vec::new())
            .header("ETag", &quoted)
            .header("X-Repo-Commit", &commit.sha);
    }
    let head = req.method == "HEAD";
    let name = file.rsplit('/').next().unwrap_or(file);
    if !head && state.fail.contains(name) {
        return Response::new(500, b"internal error".to_vec());
    }
    let mut response = Response::new(200, bytes.clone())
        .header("ETag", &quoted)
        .header("X-Repo-Commit", &commit.sha);
    response.head = head;
    if !head && state.cut.contains(name) {
        response.cut_at = Some(bytes.len() / 2);
    }
    response
}

fn commit(state: &mut State, repo: &str, body: &[u8]) -> Response {
    let Some(entry) = state.repos.get_mut(repo) else {
        return not_found("RepoNotFound");
    };
    let mut next = entry.head().cloned().unwrap_or_default();
    let mut summary = String::new();
    for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let value: serde_json::Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(_) => return Response::json(400, serde_json::json!({"error": "bad ndjson"})),
        };
        match value["key"].as_str() {
            Some("header") => summary = value["value"]["summary"].as_str().unwrap_or("").into(),
            Some("file") => {
                let v = &value["value"];
                let (Some(path), Some(content)) = (v["path"].as_str(), v["content"].as_str())
                else {
                    return Response::json(400, serde_json::json!({"error": "bad file"}));
                };
                next.files.insert(path.to_string(), base64_decode(content));
            }
            _ => return Response::json(400, serde_json::json!({"error": "unsupported"})),
        }
    }
    next.sha = commit_id(&entry.commits, &next.files);
    entry.commits.push(next.clone());
    Response::json(
        200,
        serde_json::json!({
            "commitUrl": format!("/{repo}/commit/{}", next.sha),
            "commitMessage": summary,
            "commitOid": next.sha,
        }),
    )
}

/// Standard base64 (RFC 4648 §4) with padding.
fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| *c != b'=') {
        let Some(v) = ALPHABET.iter().position(|a| *a == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
