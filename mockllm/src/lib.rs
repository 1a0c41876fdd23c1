//! A scripted OpenAI-compatible Chat Completions server, reached over loopback by tests
//! and benchmarks. The model name picks the script (`mock/<script>`):
//!
//! | model | behaviour |
//! |---|---|
//! | `mock/valid` | writes a schema-valid artifact with `write_file`, then stops |
//! | `mock/invalid-then-valid` | writes an invalid artifact unless the prompt is a repair |
//! | `mock/never-writes` | answers in text, never calls a tool |
//! | `mock/rate-limited` | first call of each conversation: 429 with `Retry-After: 1` |
//! | `mock/server-error` | first two calls of each conversation: HTTP 500 |
//! | `mock/slow-<ms>` | waits `<ms>` before answering like `valid` |
//! | `mock/steps-<n>-<ms>` | `n` turns, each answered after `<ms>`: `ls` until the last, which writes a valid artifact |
//! | `mock/malformed-args` | first turn's tool arguments are not JSON |
//! | `mock/multi-tool` | two tool calls in one turn with `content: null` |
//! | `mock/escape` | tries to write `../../etc/passwd` first |
//! | `mock/unauthorized` | HTTP 401 |
//! | `mock/secret-error` | HTTP 400 whose body carries `MOCK-PROVIDER-SECRET` (must never reach users) |
//! | `mock/always-429` | HTTP 429 with `Retry-After: 1`, every time |
//! | `mock/huge-<MiB>` | a 200 whose body is `<MiB>` MiB of assistant text |
//! | `mock/glob-bomb` | writes a file with a long name of `a`s, globs it with a backtracking pattern, then writes a valid artifact |
//! | `mock/nul-args` | tool calls with a NUL in the arguments and a control character in the name, then a valid write |
//! | `mock/negative-cost`, `mock/absurd-cost` | valid, reporting a cost of -5 USD or 1e12 USD |
//! | `mock/exfiltrate` | tries to read `/proc/self/environ`, `../../.env` and `~/.ssh/id_rsa`, then writes a valid artifact |
//! | `mock/submit` | calls `submit_artifact` with a valid artifact as its arguments |
//! | `mock/submit-object` | the same, with the arguments as a JSON object instead of a string |
//! | `mock/fenced` | no tools: replies with the artifact in one fenced JSON block |
//! | `mock/enum-wrong` | first attempt: submits an artifact with a value outside an enum, then stops; a repair submits a valid one |
//! | `mock/wrong-then-slow` | submits an artifact with a value outside an enum, then takes 3 s to answer |
//! | `mock/notes` | writes `notes/<phase>.md` with `write_file`, then says it is done |
//! | `mock/read-cite` | reads every text file the envelope lists, writes `notes/<phase>.md`, then submits the artifact; where the schema has a `files` array it lists each file read with the sha256 of what it read |
//!
//! A `-nocost` suffix leaves `usage.cost` out (the client then prices the call itself).
//! The artifact is built from the JSON Schema found in the prompt's envelope.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    /// Requests that arrived over HTTP/2.
    pub http2_requests: AtomicU64,
    conversations: Mutex<HashMap<u64, u32>>,
    /// The `X-Phasefleet-Call` ids of every request received.
    call_ids: Mutex<Vec<String>>,
    /// The `Authorization` header of every request received (empty when absent).
    authorizations: Mutex<Vec<String>>,
    /// The last [`MAX_BODIES`] request bodies.
    bodies: Mutex<Vec<Value>>,
}

/// How many request bodies [`Stats::bodies`] keeps.
pub const MAX_BODIES: usize = 500;

impl Stats {
    /// Call ids seen so far (one per request that carried the header).
    #[must_use]
    pub fn call_ids(&self) -> Vec<String> {
        self.call_ids.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The request bodies received (the last [`MAX_BODIES`]).
    #[must_use]
    pub fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// `Authorization` headers seen so far, one per request.
    #[must_use]
    pub fn authorizations(&self) -> Vec<String> {
        self.authorizations
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }
}

/// Build the router; share `stats` to read the request count.
pub fn router(stats: Arc<Stats>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(price_list))
        .route(
            "/_stats",
            get(|State(s): State<Arc<Stats>>| async move {
                Json(json!({ "requests": s.requests.load(Ordering::SeqCst), "call_ids": s.call_ids() }))
            }),
        )
        .with_state(stats)
}

/// Serve on `listener` in the background (HTTP/1.1 and cleartext HTTP/2); returns the
/// stats handle.
pub fn spawn(listener: tokio::net::TcpListener) -> Arc<Stats> {
    let stats = Arc::new(Stats::default());
    let app = router(stats.clone());
    tokio::spawn(serve(listener, app, 1_000));
    stats
}

/// Serve `app` on `listener` over HTTP/1.1 and cleartext HTTP/2 (h2c with prior
/// knowledge), at most `http2_max_streams` concurrent streams per HTTP/2 connection.
///
/// Never returns: a failed accept is logged and retried.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, http2_max_streams: u32) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait for connections to close.
                eprintln!("mock-llm: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        http.http2().max_concurrent_streams(http2_max_streams);
        tokio::spawn(async move {
            // A client that hangs up mid-request ends its connection; nothing to do.
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// A price list in OpenRouter's format: `mock/listed` at $1 / $2 per million tokens
/// (input / output); `mock/varies` without a fixed price.
async fn price_list() -> Json<Value> {
    Json(json!({ "data": [
        { "id": "mock/listed", "pricing": { "prompt": "0.000001", "completion": "0.000002" } },
        { "id": "mock/varies", "pricing": { "prompt": "-1", "completion": "-1" } },
    ] }))
}

fn hash(s: &str) -> u64 {
    // FNV-1a: stable and dependency-free; only used to tell conversations apart.
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn envelope_parts(envelope: &str) -> (String, Value) {
    let path = envelope
        .lines()
        .find_map(|l| l.strip_prefix("Expected artifact path: "))
        .unwrap_or("artifact.json")
        .trim()
        .to_owned();
    let schema = envelope
        .split_once("JSON Schema 2020-12")
        .and_then(|(_, rest)| rest.split_once("```json\n"))
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .and_then(|(s, _)| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null);
    (path, schema)
}

fn tool_call(id: &str, name: &str, arguments: String) -> Value {
    json!({ "id": id, "type": "function", "function": { "name": name, "arguments": arguments } })
}

fn submit_call(artifact: &Value) -> Value {
    tool_call("call_submit", "submit_artifact", artifact.to_string())
}

/// Set the first value the schema constrains with `enum` to one it does not allow.
fn break_first_enum(value: &mut Value, schema: &Value) -> bool {
    if schema.get("enum").is_some() {
        *value = Value::String("not-a-choice".into());
        return true;
    }
    match value {
        Value::Object(map) => {
            let Some(props) = schema.get("properties").and_then(Value::as_object) else {
                return false;
            };
            props.iter().any(|(key, sub)| {
                map.get_mut(key)
                    .is_some_and(|child| break_first_enum(child, sub))
            })
        }
        Value::Array(items) => schema
            .get("items")
            .is_some_and(|sub| items.iter_mut().any(|child| break_first_enum(child, sub))),
        _ => false,
    }
}

/// The files the envelope lists (text ones only).
fn listed_files(envelope: &str) -> Vec<String> {
    envelope
        .split_once("## Files in your workspace")
        .map(|(_, rest)| {
            rest.lines()
                .skip(1)
                .map_while(|l| l.strip_prefix("- "))
                .filter(|p| !p.ends_with(" (binary)") && !p.starts_with('…'))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `read-cite`: turn 1 reads every listed file; turn 2 writes a note and submits the
/// artifact citing what was read; then it is done.
fn read_cite(c: &Conversation) -> Turn {
    let results: Vec<&Value> = c
        .messages
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("tool"))
        .collect();
    if results.is_empty() {
        let reads: Vec<Value> = listed_files(&c.envelope)
            .iter()
            .enumerate()
            .map(|(i, p)| {
                tool_call(
                    &format!("call_read_{i}"),
                    "read_file",
                    json!({ "path": p }).to_string(),
                )
            })
            .collect();
        if !reads.is_empty() {
            return (None, reads);
        }
    }
    // What each read returned, by the path its call asked for.
    let mut read = Vec::new();
    for m in &c.messages {
        for call in m
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
            let args: Value = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .and_then(|a| serde_json::from_str(a).ok())
                .unwrap_or(Value::Null);
            let result = results
                .iter()
                .find(|r| r.get("tool_call_id").and_then(Value::as_str) == Some(id))
                .and_then(|r| r.get("content").and_then(Value::as_str));
            if let (Some(p), Some(text), true) = (
                args.get("path").and_then(Value::as_str),
                result,
                call.pointer("/function/name").and_then(Value::as_str) == Some("read_file"),
            ) {
                read.push(json!({ "path": p, "sha256": phasefleet::workflow::sha256_hex(text) }));
            }
        }
    }
    let mut artifact = c.valid_artifact();
    if c.schema.pointer("/properties/files").is_some() {
        artifact["files"] = Value::Array(read.clone());
    }
    let phase = c.phase();
    let note = format!("# {phase}\nread {} file(s)\n", read.len());
    (
        None,
        vec![
            tool_call(
                "call_note",
                "write_file",
                json!({ "path": format!("notes/{phase}.md"), "content": note }).to_string(),
            ),
            submit_call(&artifact),
        ],
    )
}

/// HTTP 429 with `Retry-After: 1`.
fn rate_limited() -> Response {
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", axum::http::HeaderValue::from_static("1"));
    (
        StatusCode::TOO_MANY_REQUESTS,
        headers,
        Json(json!({ "error": { "message": "rate limited" } })),
    )
        .into_response()
}

/// One request as the scripts see it.
struct Conversation {
    /// The request count, this request included.
    n: u64,
    model: String,
    /// The model name without `mock/` and `-nocost`.
    script: String,
    messages: Vec<Value>,
    /// The first user message: the phase's envelope.
    envelope: String,
    /// How many tool results the conversation holds so far.
    tool_results: usize,
    /// How many requests this conversation (model and envelope) has made, this one included.
    hits: u32,
    /// The artifact's path and schema, from the envelope.
    path: String,
    schema: Value,
}

impl Conversation {
    fn finished(&self) -> bool {
        self.tool_results > 0
    }

    fn repairing(&self) -> bool {
        self.envelope.contains("[REPAIR ATTEMPT]")
    }

    fn phase(&self) -> &str {
        self.envelope
            .lines()
            .find_map(|l| l.strip_prefix("Phase: "))
            .unwrap_or("phase")
            .trim()
    }

    /// A `write_file` of a valid artifact to its path.
    fn write_valid(&self) -> Value {
        let content = self.valid_artifact().to_string();
        tool_call(
            "call_write",
            "write_file",
            json!({ "path": self.path, "content": content }).to_string(),
        )
    }

    fn valid_artifact(&self) -> Value {
        phasefleet::agent::synthetic::instance(&self.schema, &self.schema, 0)
    }

    /// A valid artifact with its first enum value out of its choices.
    fn wrong_artifact(&self) -> Value {
        let mut artifact = self.valid_artifact();
        break_first_enum(&mut artifact, &self.schema);
        artifact
    }
}

/// An assistant turn: its text and its tool calls.
type Turn = (Option<String>, Vec<Value>);

fn say(text: &str) -> Turn {
    (Some(text.into()), vec![])
}

fn call(tool_calls: Vec<Value>) -> Turn {
    (None, tool_calls)
}

async fn chat(
    State(stats): State<Arc<Stats>>,
    version: axum::http::Version,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    // 1. Note the request; 2. read the conversation it continues.
    let n = record_request(&stats, version, &headers, &body);
    let conversation = read_conversation(&stats, n, &body);
    // 3. The script's failure, or its turn (a well-behaved one by default).
    if let Some(failure) = failure_reply(&conversation) {
        return failure;
    }
    let turn = match hostile_turn(&conversation) {
        Some(turn) => Some(turn),
        None => match artifact_turn(&conversation) {
            Some(turn) => Some(turn),
            None => timed_turn(&conversation).await,
        },
    };
    let turn = turn.unwrap_or_else(|| {
        if conversation.finished() {
            say("done")
        } else {
            call(vec![conversation.write_valid()])
        }
    });
    // 4. The completion.
    completion(&conversation, turn)
}

/// Count the request and keep what tests read back; returns the request count.
fn record_request(
    stats: &Stats,
    version: axum::http::Version,
    headers: &HeaderMap,
    body: &Value,
) -> u64 {
    let n = stats.requests.fetch_add(1, Ordering::SeqCst) + 1;
    if version == axum::http::Version::HTTP_2 {
        stats.http2_requests.fetch_add(1, Ordering::SeqCst);
    }
    if let Some(id) = headers
        .get("x-phasefleet-call")
        .and_then(|v| v.to_str().ok())
        && let Ok(mut ids) = stats.call_ids.lock()
    {
        ids.push(id.to_owned());
    }
    if let Ok(mut seen) = stats.authorizations.lock() {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        seen.push(auth.to_owned());
    }
    if let Ok(mut bodies) = stats.bodies.lock() {
        if bodies.len() == MAX_BODIES {
            bodies.remove(0);
        }
        bodies.push(body.clone());
    }
    n
}

fn read_conversation(stats: &Stats, n: u64, body: &Value) -> Conversation {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let script = model
        .strip_prefix("mock/")
        .unwrap_or(&model)
        .trim_end_matches("-nocost")
        .to_owned();
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let envelope = messages
        .iter()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content").and_then(Value::as_str))
        .unwrap_or("")
        .to_owned();
    let tool_results = messages
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("tool"))
        .count();
    let hits = {
        let mut conv = stats
            .conversations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = conv
            .entry(hash(&format!("{model}\n{envelope}")))
            .or_insert(0);
        *c += 1;
        *c
    };
    let (path, schema) = envelope_parts(&envelope);
    Conversation {
        n,
        model,
        script,
        messages,
        envelope,
        tool_results,
        hits,
        path,
        schema,
    }
}

/// The scripts that answer with an HTTP error or an oversized body.
fn failure_reply(c: &Conversation) -> Option<Response> {
    let error = |code: StatusCode, msg: &str| {
        (
            code,
            Json(json!({ "error": { "message": msg, "code": code.as_u16() } })),
        )
            .into_response()
    };
    let reply = match c.script.as_str() {
        "unauthorized" => error(StatusCode::UNAUTHORIZED, "invalid API key"),
        "secret-error" => error(
            StatusCode::BAD_REQUEST,
            "MOCK-PROVIDER-SECRET: internal routing table 10.0.0.7, key sk-live-123",
        ),
        "always-429" => rate_limited(),
        "rate-limited" if c.hits == 1 => rate_limited(),
        "server-error" if c.hits <= 2 => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded")
        }
        s if s.starts_with("huge-") => {
            let mib: usize = s
                .strip_prefix("huge-")
                .and_then(|v| v.parse().ok())
                .unwrap_or(16);
            let text = "x".repeat(mib * 1024 * 1024);
            Json(json!({ "id": format!("mock-{}", c.n), "object": "chat.completion", "model": c.model,
                "choices": [{ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": "stop" }],
                "usage": { "prompt_tokens": 1, "completion_tokens": 1 } }))
            .into_response()
        }
        _ => return None,
    };
    Some(reply)
}

/// The scripts that attack the worker through tool calls before behaving.
fn hostile_turn(c: &Conversation) -> Option<Turn> {
    let turn = match (c.script.as_str(), c.tool_results) {
        ("malformed-args", 0) => call(vec![tool_call(
            "call_broken",
            "write_file",
            "{\"path\": ".into(),
        )]),
        ("escape", 0) => call(vec![tool_call(
            "call_escape",
            "write_file",
            json!({ "path": "../../etc/passwd", "content": "x" }).to_string(),
        )]),
        ("glob-bomb", 0) => call(vec![tool_call(
            "call_long",
            "write_file",
            json!({ "path": "a".repeat(200), "content": "x" }).to_string(),
        )]),
        ("glob-bomb", 1) => call(vec![
            tool_call(
                "call_glob",
                "glob",
                json!({ "pattern": format!("{}b", "*a".repeat(30)) }).to_string(),
            ),
            tool_call(
                "call_grep",
                "grep",
                json!({ "pattern": format!("{}b", "(a*)*".repeat(10)) }).to_string(),
            ),
        ]),
        ("nul-args", 0) => call(vec![
            tool_call(
                "call_nul",
                "write_file",
                json!({ "path": c.path, "content": "{\"a\u{0}\": 1}\u{0}" }).to_string(),
            ),
            tool_call("call_bell", "write\u{7}file\u{0}", "{}".into()),
        ]),
        ("exfiltrate", 0) => call(exfiltration_calls()),
        // After the attack's tool results: behave.
        ("malformed-args" | "escape", 1)
        | ("nul-args", 2)
        | ("glob-bomb", 3)
        | ("exfiltrate", 4) => call(vec![c.write_valid()]),
        _ => return None,
    };
    Some(turn)
}

/// `exfiltrate`'s reads of secrets outside the workspace.
fn exfiltration_calls() -> Vec<Value> {
    let read =
        |id: &str, path: &str| tool_call(id, "read_file", json!({ "path": path }).to_string());
    vec![
        read("call_environ", "/proc/self/environ"),
        read("call_dotenv", "../../.env"),
        read("call_ssh", "~/.ssh/id_rsa"),
        tool_call("call_ls", "ls", json!({ "path": ".." }).to_string()),
    ]
}

/// The scripts that vary how (and whether) the artifact is delivered.
fn artifact_turn(c: &Conversation) -> Option<Turn> {
    let turn = match c.script.as_str() {
        "never-writes" => say("I would rather describe the artifact than write it."),
        "invalid-then-valid" if !c.finished() && !c.repairing() => (
            Some(String::new()),
            vec![tool_call(
                "call_bad",
                "write_file",
                json!({ "path": c.path, "content": "{\"oops\": true}" }).to_string(),
            )],
        ),
        "submit" if !c.finished() => (Some(String::new()), vec![submit_call(&c.valid_artifact())]),
        // The arguments as a JSON object instead of a string.
        "submit-object" if !c.finished() => (
            Some(String::new()),
            vec![json!({ "id": "call_submit", "type": "function",
                "function": { "name": "submit_artifact", "arguments": c.valid_artifact() } })],
        ),
        "fenced" => say(&format!(
            "Here is the artifact:\n```json\n{}\n```",
            serde_json::to_string_pretty(&c.valid_artifact()).unwrap_or_default()
        )),
        "enum-wrong" if c.repairing() && !c.finished() => {
            call(vec![submit_call(&c.valid_artifact())])
        }
        "enum-wrong" | "wrong-then-slow" if !c.finished() => {
            call(vec![submit_call(&c.wrong_artifact())])
        }
        "enum-wrong" => say("I am done."),
        "read-cite" => read_cite(c),
        "notes" if !c.finished() => {
            let phase = c.phase();
            call(vec![tool_call(
                "call_notes",
                "write_file",
                json!({ "path": format!("notes/{phase}.md"), "content": format!("# {phase}\nnotes\n") })
                    .to_string(),
            )])
        }
        "multi-tool" if !c.finished() => call(vec![
            tool_call("call_ls", "ls", "{}".into()),
            c.write_valid(),
        ]),
        _ => return None,
    };
    Some(turn)
}

/// The scripts that take their time: `slow-<ms>`, `steps-<n>-<ms>`, `wrong-then-slow`.
async fn timed_turn(c: &Conversation) -> Option<Turn> {
    let script = c.script.as_str();
    if script == "wrong-then-slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
        return Some(say("done"));
    }
    if let Some(steps) = script.strip_prefix("steps-") {
        let mut parts = steps.split('-');
        let turns: usize = parts.next().and_then(|v| v.parse().ok()).unwrap_or(3);
        let ms: u64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Some(match (c.tool_results + 1).cmp(&turns) {
            std::cmp::Ordering::Less => call(vec![tool_call(
                &format!("call_ls_{}", c.tool_results),
                "ls",
                "{}".into(),
            )]),
            std::cmp::Ordering::Equal => call(vec![c.write_valid()]),
            std::cmp::Ordering::Greater => say("done"),
        });
    }
    if script == "slow" || script.starts_with("slow-") {
        let ms = script
            .strip_prefix("slow-")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    // Then as the default script.
    None
}

/// The Chat Completions response carrying `turn`, with usage (and a cost unless the
/// model ends in `-nocost`).
fn completion(c: &Conversation, turn: Turn) -> Response {
    let (content, calls) = turn;
    let finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    let mut message = json!({ "role": "assistant", "content": content });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let mut usage = json!({
        "prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
        "prompt_tokens_details": { "cached_tokens": 10 }, "completion_tokens_details": { "reasoning_tokens": 5 }
    });
    if !c.model.ends_with("-nocost") {
        usage["cost"] = match c.script.as_str() {
            "negative-cost" => json!(-5.0),
            "absurd-cost" => json!(1e12),
            _ => json!(0.0005),
        };
    }
    let mut headers = HeaderMap::new();
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("mock-req-{}", c.n)) {
        headers.insert("x-request-id", v);
    }
    (
        headers,
        Json(
            json!({ "id": format!("mock-{}", c.n), "object": "chat.completion", "model": c.model,
        "choices": [{ "index": 0, "message": message, "finish_reason": finish }], "usage": usage }),
        ),
    )
        .into_response()
}
