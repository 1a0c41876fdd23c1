//! An in-process API server on a free loopback port, and a small HTTP client for it.
#![allow(dead_code, clippy::unwrap_used)]

use phasefleet_api::AppState;
use phasefleet_api::auth::Tokens;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub const ADMIN: &str = "admin-token-0123456789abcdef";
pub const SUBMIT: &str = "submit-token-0123456789abcdef";
pub const APPROVE: &str = "approve-token-0123456789abcdef";
pub const READ: &str = "read-token-0123456789abcdef";
/// Tokens of two more teams, for isolation tests.
pub const TEAM_A_SUBMIT: &str = "team-a-submit-0123456789abcdef";
pub const TEAM_A_APPROVE: &str = "team-a-approve-0123456789abcdef";
pub const TEAM_A_ADMIN: &str = "team-a-admin-0123456789abcdef";
pub const TEAM_B_SUBMIT: &str = "team-b-submit-0123456789abcdef";
pub const TEAM_B_APPROVE: &str = "team-b-approve-0123456789abcdef";
pub const TEAM_B_READ: &str = "team-b-read-0123456789abcdef";

pub fn tokens() -> Tokens {
    Tokens::parse(&format!(
        "admin:{ADMIN},submit:{SUBMIT},approve:{APPROVE},read:{READ},\
         team-a/submit:{TEAM_A_SUBMIT},team-a/approve:{TEAM_A_APPROVE},team-a/admin:{TEAM_A_ADMIN},\
         team-b/submit:{TEAM_B_SUBMIT},team-b/approve:{TEAM_B_APPROVE},team-b/read:{TEAM_B_READ}"
    ))
    .unwrap()
}

pub struct ApiServer {
    pub base: String,
    pub stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    pub async fn start(pool: &PgPool, redis_url: Option<&str>) -> Self {
        Self::start_with_config(pool, redis_url, super::engine::config()).await
    }

    /// [`ApiServer::start`] with the operator configuration `config` (teams `team-a`
    /// and `team-b` added).
    pub async fn start_with_config(
        pool: &PgPool,
        redis_url: Option<&str>,
        mut config: phasefleet::config::Config,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        for team in ["team-a", "team-b"] {
            config.teams.insert(
                team.into(),
                phasefleet::config::TeamConfig {
                    queues: Some(vec!["*".into()]),
                    ..Default::default()
                },
            );
        }
        let state = AppState::new(
            pool.clone(),
            super::engine::schemas(),
            config,
            tokens(),
            redis_url.map(str::to_owned),
            stop.clone(),
        );
        let s = stop.clone();
        let handle = tokio::spawn(async move {
            phasefleet_api::serve(
                listener,
                state,
                phasefleet_api::server::Limits::default(),
                s,
            )
            .await
            .unwrap();
        });
        Self { base, stop, handle }
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        self.handle.await.unwrap();
    }

    pub fn client(&self, token: Option<&str>) -> Client {
        // reqwest is built without a default TLS crypto provider (see the LLM client).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Client {
            base: self.base.clone(),
            token: token.map(str::to_owned),
            http: reqwest::Client::new(),
        }
    }
}

pub struct Client {
    pub base: String,
    pub token: Option<String>,
    pub http: reqwest::Client,
}

impl Client {
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// GET `path` and return its body as text.
    pub async fn text(&self, path: &str) -> String {
        let res = self.request(Method::GET, path).send().await.unwrap();
        res.text().await.unwrap()
    }

    /// Send and return (status, JSON body or Null).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.request(Method::POST, path).json(body)).await
    }
}

/// The bundled example as a submit body on `queue`, with `extra` inputs.
pub fn example_body(queue: &str, extra: Value) -> Value {
    let repo = super::engine::repo;
    let read = |p: &str| std::fs::read_to_string(repo(p)).unwrap();
    serde_json::json!({
        "template": read("examples/spec-review-verify.yaml"),
        "personas": [read("examples/personas/synthetic-author.yaml"), read("examples/personas/synthetic-reviewer.yaml")],
        "inputs": { "requirements": "# API test", "objective": {"goal": "api"}, "extra": extra },
        "queue": queue,
    })
}

/// Assert the stable error shape and return its code.
pub fn error_code(body: &Value) -> String {
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error shape: {body}"
    );
    assert!(e["status"].as_u64().is_some(), "error shape: {body}");
    e["code"].as_str().unwrap().to_owned()
}

/// Read SSE messages from `res` until `stop` says so; returns (id, event, data) triples.
pub async fn read_sse(
    res: &mut reqwest::Response,
    mut stop: impl FnMut(&str, &Value) -> bool,
) -> Vec<(Option<i64>, String, Value)> {
    let mut out = Vec::new();
    let mut buf = String::new();
    loop {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(60), res.chunk())
            .await
            .expect("an SSE message within 60 s")
            .unwrap();
        let Some(chunk) = chunk else { return out };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let block: String = buf.drain(..i + 2).collect();
            let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if data.is_empty() {
                continue; // keep-alive comment
            }
            let value: Value = serde_json::from_str(&data).unwrap();
            let done = stop(&event, &value);
            out.push((id, event, value));
            if done {
                return out;
            }
        }
    }
}
