//! The HTTP server under abuse, as an attacker with an ordinary token (or none) would
//! try it: hostile bodies (a YAML alias bomb, arrays where objects belong), a slowloris
//! flood of half-sent requests, made-up methods and scrapers against `/metrics`, and
//! the UI's headers. The API runs as its own process (`phasefleet-api`), so its memory
//! and its open connections are measured, not the test's.
#![allow(clippy::unwrap_used)]

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::api::{ADMIN, SUBMIT, example_body};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct ApiProcess {
    child: tokio::process::Child,
    base: String,
    addr: String,
    _config: support::engine::ConfigFile,
}

impl ApiProcess {
    async fn start(env: &[(&str, &str)]) -> Self {
        let _ = pool().await; // the shared database exists and is migrated
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = support::engine::mock_config_file("http://127.0.0.1:9/v1");
        let child = tokio::process::Command::new(workspace_bin("phasefleet-api"))
            .args(["--database-url", &test_db_url(), "--listen", &addr])
            .env(
                "PHASEFLEET_API_TOKENS",
                format!("admin:{ADMIN},submit:{SUBMIT}"),
            )
            .env("PHASEFLEET_CONFIG", config.path())
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let base = format!("http://{addr}");
        let http = client();
        eventually(Duration::from_secs(30), "the API answers", || async {
            http.get(format!("{base}/healthz"))
                .send()
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        Self {
            child,
            base,
            addr,
            _config: config,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// (current RSS, peak RSS) in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn open_sockets(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
            })
            .count()
    }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A template whose instructions alias one 100 KB string `aliases` times.
fn alias_bomb(aliases: usize) -> String {
    let mut yaml = format!(
        "name: bomb\nversion: '1'\nroles: {{ r: {{ persona: p }} }}\ndescription: &a \"{}\"\nphases:\n",
        "x".repeat(100_000)
    );
    for i in 0..aliases {
        yaml.push_str(&format!(
            "- {{key: p{i}, role: r, instructions: *a, expected_artifact: {{path: a{i}.json, schema: spec.v1}}}}\n"
        ));
    }
    yaml
}

#[tokio::test]
async fn hostile_bodies_get_clear_errors_at_bounded_cost() {
    let api = ApiProcess::start(&[]).await;
    let http = client();
    let q = unique_queue("abuse-bodies");
    let post = |body: Value| {
        http.post(format!("{}/v1/runs", api.base))
            .bearer_auth(SUBMIT)
            .json(&body)
            .send()
    };
    let (rss_before, _) = api.memory_kib();
    let persona = json!({"name": "p", "version": "1", "backend": "synthetic", "model": "s", "system_prompt": "s"});
    let mut slowest = Duration::ZERO;
    let mut bodies = vec![
        (
            "alias bomb",
            json!({ "template": alias_bomb(4000), "personas": [persona], "queue": q }),
        ),
        (
            "alias bomb, small",
            json!({ "template": alias_bomb(1500), "personas": [persona], "queue": q }),
        ),
    ];
    let mut arrays = example_body(&q, json!({}));
    arrays["inputs"] = json!([]);
    bodies.push(("inputs as an array", arrays));
    let mut budget = example_body(&q, json!({}));
    budget["budget"] = json!([0.5, 1000]);
    bodies.push(("budget as an array", budget));
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    bodies.push((
        "deep nesting",
        json!({ "template": deep, "personas": [persona], "queue": q }),
    ));
    let mut wide = example_body(&q, json!({}));
    wide["inputs"]["extra"] = (0..30_000)
        .map(|i| (format!("k{i}"), json!(i)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    bodies.push(("a wide object", wide));
    for (what, body) in bodies {
        assert!(
            body.to_string().len() <= 1024 * 1024,
            "{what} fits the body limit"
        );
        let started = Instant::now();
        let res = post(body).await.unwrap();
        slowest = slowest.max(started.elapsed());
        let status = res.status();
        let err: Value = res.json().await.unwrap();
        assert!(
            status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST,
            "{what}: {status} {err}"
        );
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {err}"
        );
        if what.ends_with("as an array") {
            let field = err["error"]["field"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(field == "inputs" || field == "budget", "{what}: {err}");
        }
    }
    let (_, peak) = api.memory_kib();
    assert!(
        peak.saturating_sub(rss_before) < 64 * 1024,
        "hostile bodies cost the API {} KiB (peak {peak} KiB)",
        peak.saturating_sub(rss_before)
    );
    eprintln!(
        "hostile bodies: peak RSS {} KiB over {rss_before} KiB, slowest answer {slowest:?}",
        peak.saturating_sub(rss_before)
    );
    let (s, _) = (
        post(example_body(&q, json!({}))).await.unwrap().status(),
        (),
    );
    assert_eq!(s, StatusCode::CREATED, "the API still serves");
}

#[tokio::test]
async fn half_sent_requests_are_closed_and_connections_are_bounded() {
    let api = ApiProcess::start(&[
        ("PHASEFLEET_MAX_CONNECTIONS", "200"),
        ("PHASEFLEET_HEADER_TIMEOUT_MS", "1000"),
    ])
    .await;
    let mut sockets = Vec::new();
    for i in 0..2000 {
        let Ok(mut s) = tokio::net::TcpStream::connect(&api.addr).await else {
            continue;
        };
        if i % 2 == 0 {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
        }
        sockets.push(s);
    }
    assert!(sockets.len() > 1500, "the client opened its connections");
    assert!(
        api.open_sockets() <= 200 + 20,
        "the server holds {} sockets",
        api.open_sockets()
    );
    // A well-behaved client still gets served while the flood is open.
    let http = client();
    eventually(
        Duration::from_secs(10),
        "a normal request is served",
        || async {
            http.get(format!("{}/healthz", api.base))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut still_open = 0;
    for s in &mut sockets {
        let mut buf = [0u8; 64];
        if tokio::time::timeout(Duration::from_millis(5), s.read(&mut buf))
            .await
            .is_err()
        {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "half-sent connections left open past the header timeout"
    );
}

#[tokio::test]
async fn metric_labels_are_a_closed_set_and_scrapes_cost_the_database_nothing() {
    // Refreshes happen at start and every 5 s after, whatever the scrapes.
    let started = Instant::now();
    let api = ApiProcess::start(&[]).await;
    let http = client();
    // The first refresh reads the shared, populated database; wait until it is done,
    // so the counter below is there to read.
    eventually(Duration::from_secs(60), "the first gauge refresh", || {
        let http = http.clone();
        let url = format!("{}/metrics", api.base);
        async move {
            let text = http.get(url).send().await.ok()?.text().await.ok()?;
            text.contains("phasefleet_api_gauge_refreshes_total ")
                .then_some(())
        }
    })
    .await;
    for i in 0..300 {
        let method = reqwest::Method::from_bytes(format!("MADEUP{i}").as_bytes()).unwrap();
        let _ = http
            .request(method, format!("{}/healthz", api.base))
            .send()
            .await;
    }
    let scrapes: Vec<_> = (0..64)
        .map(|_| {
            let http = http.clone();
            let url = format!("{}/metrics", api.base);
            tokio::spawn(async move { http.get(url).send().await.unwrap() })
        })
        .collect();
    let mut text = String::new();
    for s in scrapes {
        let res = s.await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        text = res.text().await.unwrap();
    }
    let methods: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("phasefleet_http_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
        .collect();
    assert!(
        methods.iter().all(|m| [
            "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "other"
        ]
        .contains(m)),
        "{methods:?}"
    );
    let refreshes: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("phasefleet_api_gauge_refreshes_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the gauge refresh counter");
    let periods = started.elapsed().as_secs_f64() / 5.0 + 2.0;
    assert!(
        refreshes <= periods + 1.0,
        "64 scrapes caused {refreshes} database refreshes"
    );
}

#[tokio::test]
async fn metrics_want_their_token_when_one_is_set() {
    let api = ApiProcess::start(&[("PHASEFLEET_METRICS_TOKEN", "metrics-token-0123456789")]).await;
    let http = client();
    let url = format!("{}/metrics", api.base);
    assert_eq!(
        http.get(&url).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        http.get(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        http.get(&url)
            .bearer_auth("metrics-token-0123456789")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_ui_is_served_with_a_strict_policy() {
    let api = ApiProcess::start(&[]).await;
    let http = client();
    for path in ["/", "/ui/app.js", "/ui/app.css"] {
        let res = http
            .get(format!("{}{path}", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let h = res.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
    }
    let page = http
        .get(&api.base)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "no inline code"
    );
}
