//! The web UI end to end in headless Chromium, driven over WebDriver (chromedriver,
//! started by the test): submit the example run, wait for its approval, click approve,
//! see the run complete. Needs Debian's `chromium` and `chromium-driver`
//! (`scripts/provision.sh` installs them).
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::api::{ADMIN, ApiServer};
use support::engine::Fleet;
use support::*;

/// Key WebDriver uses for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Browser {
    http: reqwest::Client,
    session: String,
    driver: tokio::process::Child,
}

impl Browser {
    async fn start() -> Self {
        let find = |names: &[&str]| {
            names
                .iter()
                .map(std::path::PathBuf::from)
                .find(|p| p.exists())
        };
        let driver_bin = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"])
            .expect("chromedriver not found: run scripts/provision.sh (installs Debian's chromium and chromium-driver)");
        let chromium = find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"])
            .expect("chromium not found: run scripts/provision.sh");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // Its own process group, so dropping the browser kills Chromium too.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let caps = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": { "binary": chromium, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--window-size=1280,1600"] } } } });
        let session = eventually(Duration::from_secs(30), "chromedriver session", || async {
            let res = http
                .post(format!("{base}/session"))
                .json(&caps)
                .send()
                .await
                .ok()?;
            let v: Value = res.json().await.ok()?;
            v["value"]["sessionId"]
                .as_str()
                .map(|s| format!("{base}/session/{s}"))
        })
        .await;
        Self {
            http,
            session,
            driver,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let res = self
            .http
            .request(method, format!("{}{path}", self.session))
            .json(&body)
            .send()
            .await
            .unwrap();
        let v: Value = res.json().await.unwrap();
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// Run JavaScript in the page and return its result.
    async fn js(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Wait for a CSS selector to match a displayed element; return its reference.
    async fn wait_for(&self, css: &str, what: &str) -> String {
        eventually(Duration::from_secs(60), what, || async {
            let v = self
                .cmd(
                    reqwest::Method::POST,
                    "/element",
                    json!({ "using": "css selector", "value": css }),
                )
                .await;
            v[ELEMENT].as_str().map(str::to_owned)
        })
        .await
    }

    /// Click the element `css` matches; a page that re-rendered it between finding
    /// and clicking (a stale element) is asked again.
    async fn click(&self, css: &str, what: &str) {
        eventually(Duration::from_secs(60), what, || async {
            let el = self.wait_for(css, what).await;
            let v = self
                .cmd(
                    reqwest::Method::POST,
                    &format!("/element/{el}/click"),
                    json!({}),
                )
                .await;
            v.get("error").is_none().then_some(())
        })
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.wait_for(css, css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{el}/clear"),
            json!({}),
        )
        .await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{el}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn quit(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

impl Drop for Browser {
    /// Kill chromedriver's whole process group (Chromium included), even when a test
    /// assertion failed before `quit`. The `-s KILL -- -PGID` form matters: procps-ng
    /// 4.0.2's `kill -KILL -PGID` does not parse the group as a group.
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}

#[tokio::test]
async fn a_person_submits_a_run_in_the_browser_approves_it_and_sees_it_complete() {
    let pool = pool().await;
    let q = unique_queue("browser");
    let api = ApiServer::start(&pool, None).await;
    let fleet = Fleet::synthetic(&pool, &q, 1);
    let browser = Browser::start().await;

    // The token arrives in the URL fragment, as `phasefleet dev` prints it, and leaves
    // the address bar at once.
    browser.goto(&format!("{}/#token={ADMIN}", api.base)).await;
    browser.wait_for("table#runs", "runs list").await;
    let href = browser.js("return location.href").await;
    assert!(!href.as_str().unwrap().contains("token="), "{href}");
    // A link carrying another token asks before replacing the stored one; declined, the
    // stored token stays.
    browser
        .goto(&format!(
            "{}/#token=someone-elses-token-0123456789",
            api.base
        ))
        .await;
    let alert = eventually(Duration::from_secs(10), "the confirm dialog", || async {
        let text = browser
            .cmd(reqwest::Method::GET, "/alert/text", json!({}))
            .await;
        text.as_str().map(str::to_owned)
    })
    .await;
    assert!(alert.contains("token"), "{alert}");
    browser
        .cmd(reqwest::Method::POST, "/alert/dismiss", json!({}))
        .await;
    let stored = browser.js("return localStorage.getItem('pf_token')").await;
    assert_eq!(stored, json!(ADMIN));
    browser.wait_for("table#runs", "runs list").await;
    browser.goto(&format!("{}/#/submit", api.base)).await;
    browser.click("#example", "example button").await;
    eventually(Duration::from_secs(20), "example loaded", || async {
        let v = browser
            .js("return document.querySelector('#template').value.length")
            .await;
        (v.as_u64().unwrap_or(0) > 0).then_some(())
    })
    .await;
    browser.type_into("#queue", &q).await;
    browser.click("#submit", "submit button").await;
    let run = eventually(Duration::from_secs(30), "run page opens", || async {
        let h = browser.js("return location.hash").await;
        h.as_str()
            .and_then(|h| h.strip_prefix("#/runs/"))
            .map(str::to_owned)
    })
    .await;
    let run_id: phasefleet::RunId = run.parse().unwrap();

    // The live timeline shows the approval; approve it with a click.
    browser
        .wait_for(
            "#run-state [data-state='awaiting_approval']",
            "run waits on a human",
        )
        .await;
    browser
        .click(".approval button[data-action='approve']", "approve button")
        .await;
    browser
        .wait_for(
            "#run-state [data-state='completed']",
            "run completed in the UI",
        )
        .await;
    browser
        .wait_for(
            "#timeline li[data-kind='run.completed']",
            "live timeline shows the end",
        )
        .await;
    // The report is shown rendered (a heading, not Markdown source).
    let report = eventually(Duration::from_secs(20), "report shown", || async {
        let v = browser
            .js("return document.querySelector('#report h1') && document.querySelector('#report').textContent")
            .await;
        v.as_str()
            .filter(|t| t.starts_with("Run"))
            .map(str::to_owned)
    })
    .await;
    assert!(report.contains("completed"), "{report}");

    // The artifact viewer shows stored content.
    browser.click("button.view", "artifact view button").await;
    eventually(
        Duration::from_secs(20),
        "artifact content shown",
        || async {
            let v = browser
                .js("return document.querySelector('#artifact-view').textContent")
                .await;
            v.as_str()
                .filter(|t| t.trim_start().starts_with('{'))
                .map(|_| ())
        },
    )
    .await;

    // What the UI showed is what the database holds.
    let mut c = pool.acquire().await.unwrap();
    let db_run = phasefleet::store::runs::runs_get(&mut c, run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(db_run.state, phasefleet::state::RunState::Completed);
    assert_eq!(db_run.queue, q);
    let approvals = phasefleet::approval::for_run(&mut c, run_id).await.unwrap();
    assert_eq!(approvals.len(), 1);
    assert_eq!(
        approvals[0].action,
        Some(phasefleet::approval::Action::Approve)
    );
    assert_eq!(approvals[0].decided_by.as_deref(), Some("admin-token-1"));
    browser.quit().await;
    fleet.shutdown().await;
    api.shutdown().await;
}

#[tokio::test]
async fn the_run_page_draws_a_graph_run_with_parallel_branches_a_fan_out_and_a_skipped_phase() {
    let pool = pool().await;
    let q = unique_queue("browser-graph");
    let api = ApiServer::start(&pool, None).await;
    let template = phasefleet::workflow::Definition::load(&support::engine::repo(
        "examples/parallel-review.yaml",
    ))
    .unwrap();
    let mut req = support::engine::request(&q, json!({"synthetic": {"array_items": 3}}));
    req.template = template;
    let run = support::engine::submit(&pool, req).await;
    let fleet = Fleet::synthetic(&pool, &q, 2);
    let browser = Browser::start().await;
    browser.goto(&format!("{}/#token={ADMIN}", api.base)).await;
    browser.wait_for("table#runs", "runs list").await;
    browser.goto(&format!("{}/#/runs/{run}", api.base)).await;
    // The summary waits on a human; the graph shows every phase with its state.
    browser
        .wait_for(
            "svg.graph g[data-node='summary'][data-state='awaiting_approval']",
            "the summary waits in the graph",
        )
        .await;
    browser
        .wait_for(
            "svg.graph g[data-node='rework'][data-state='skipped']",
            "the skipped rework is drawn greyed",
        )
        .await;
    let drawn = browser
        .js("return [document.querySelectorAll('svg.graph g.node').length, document.querySelectorAll('svg.graph line.edge').length, document.querySelector(\"svg.graph g[data-node='verify'] text\").textContent, getComputedStyle(document.querySelector(\"svg.graph g[data-node='rework'] rect\")).strokeDasharray, document.querySelector(\"tr[data-phase='rework']\").className]")
        .await;
    // 7 phases (the fan-out drawn once); 9 edges: spec into each review, each review
    // into rework, spec and rework into verify, verify into summary.
    assert_eq!(drawn[0], 7, "{drawn}");
    assert_eq!(drawn[1], 9, "{drawn}");
    assert_eq!(drawn[2], "verify ×3 (3 done)", "{drawn}");
    assert_ne!(drawn[3], "none", "skipped is dashed: {drawn}");
    assert_eq!(drawn[4], "skipped", "{drawn}");
    screenshot(&browser, "run-graph.png").await;
    browser
        .click(".approval button[data-action='approve']", "approve button")
        .await;
    browser
        .wait_for(
            "svg.graph g[data-node='summary'][data-state='completed']",
            "the summary completes in the graph",
        )
        .await;
    browser.quit().await;
    fleet.shutdown().await;
    api.shutdown().await;
}

#[tokio::test]
async fn a_reviewer_watches_model_and_tool_calls_arrive_live_on_the_run_page() {
    let pool = pool().await;
    let q = unique_queue("browser-live");
    let api = ApiServer::start(&pool, None).await;
    let mock = support::mock::Mock::start().await;
    // Six turns of 800 ms each: five `ls` calls, then the artifact.
    let mut req = support::engine::request(&q, json!({}));
    req.personas
        .push(support::mock::persona("mock/steps-6-800"));
    req.bindings.insert("author".into(), "llm".into());
    let run = support::engine::submit(&pool, req).await;
    let browser = Browser::start().await;
    browser.goto(&format!("{}/#token={ADMIN}", api.base)).await;
    browser.wait_for("table#runs", "runs list").await;
    browser.goto(&format!("{}/#/runs/{run}", api.base)).await;
    let fleet = Fleet::start(&pool, &q, 1, 2, mock.agent());

    // The first tool call shows under the spec phase while that phase still runs.
    browser
        .wait_for(
            "#activity [data-activity='spec'] li[data-kind='tool.called']",
            "a tool call shown live",
        )
        .await;
    let mut c = pool.acquire().await.unwrap();
    let spec = support::engine::phase_of(&mut c, run, "spec")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        spec.state,
        phasefleet::state::PhaseState::Running,
        "seen while the phase runs"
    );
    let shown = browser
        .js("return [...document.querySelectorAll(\"#activity [data-activity='spec'] li\")].map(li => li.dataset.kind + ' ' + li.textContent)")
        .await;
    let shown: Vec<String> = serde_json::from_value(shown).unwrap();
    assert!(
        shown[0].starts_with("model.call_started") && shown[0].contains("mock/steps-6-800"),
        "{shown:?}"
    );
    assert!(
        shown
            .iter()
            .any(|s| s.starts_with("model.call_finished") && s.contains("ok")),
        "{shown:?}"
    );
    assert!(
        shown
            .iter()
            .any(|s| s.starts_with("tool.called") && s.contains("tool ls: ok")),
        "{shown:?}"
    );

    // The artifact's write arrives too, and the run goes on to its gate.
    browser
        .wait_for(
            "#activity [data-activity='spec'] li:nth-of-type(18)",
            "every spec call shown",
        )
        .await;
    browser
        .wait_for(
            "#run-state [data-state='awaiting_approval']",
            "run waits on a human",
        )
        .await;
    let spec_items = browser
        .js("return [...document.querySelectorAll(\"#activity [data-activity='spec'] li\")].map(li => li.dataset.kind)")
        .await;
    let spec_items: Vec<String> = serde_json::from_value(spec_items).unwrap();
    let count = |k: &str| spec_items.iter().filter(|s| *s == k).count();
    // What the page showed is the ledger and the tool audit, one item per row.
    let calls = phasefleet::store::ledger::llm_calls_count(&mut c, run, "spec", 1)
        .await
        .unwrap();
    let tools = phasefleet::store::ledger::tool_calls_list(&mut c, run, 0, 100)
        .await
        .unwrap();
    let spec_tools = tools.iter().filter(|t| t.phase_key == "spec").count();
    assert_eq!(count("model.call_started") as i64, calls, "{spec_items:?}");
    assert_eq!(count("model.call_finished") as i64, calls, "{spec_items:?}");
    assert_eq!(count("tool.called"), spec_tools, "{spec_items:?}");
    assert_eq!(spec_tools, 6, "five ls and one write: {tools:?}");
    browser.quit().await;
    fleet.shutdown().await;
    api.shutdown().await;
}

#[tokio::test]
async fn an_operator_requeues_a_dead_job_and_pauses_a_queue_from_the_fleet_page_and_sees_the_audit()
{
    let pool = pool().await;
    let q = unique_queue("browser-fleet");
    let api = ApiServer::start(&pool, None).await;
    let worker = WorkerProcess::spawn(
        &test_db_url(),
        &q,
        &["--lease-ms", "3000", "--poll-ms", "200"],
    );
    let worker_id = worker_id_of(&pool, worker.pid()).await;
    // A job that fails until `until` and has one attempt: it dies, and a requeue after
    // `until` completes it.
    let until = chrono::Utc::now().timestamp_millis() + 3_000;
    let dead = enqueue(
        &pool,
        phasefleet::queue::NewJob::new("fail", json!({ "until_unix_ms": until }))
            .queue(&q)
            .max_attempts(1),
    )
    .await;
    eventually(Duration::from_secs(30), "the job is dead", || async {
        (job_state(&pool, dead).await == phasefleet::queue::JobState::Dead).then_some(())
    })
    .await;
    while chrono::Utc::now().timestamp_millis() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let browser = Browser::start().await;
    browser.goto(&format!("{}/#token={ADMIN}", api.base)).await;
    browser.wait_for("table#runs", "runs list").await;
    browser.goto(&format!("{}/#/fleet", api.base)).await;
    browser
        .wait_for("svg.throughput rect", "the throughput chart")
        .await;
    let live_worker = format!("#workers tr[data-worker='{worker_id}']");
    browser.wait_for(&live_worker, "the worker listed").await;

    // Requeue the dead job with a click: it runs again and completes.
    browser
        .click(
            &format!("#dead tr[data-job='{}'] button.requeue", dead.0),
            "requeue button",
        )
        .await;
    eventually(
        Duration::from_secs(30),
        "the requeued job completes",
        || async {
            (job_state(&pool, dead).await == phasefleet::queue::JobState::Completed).then_some(())
        },
    )
    .await;

    // Pause the queue with a click: the page shows it paused, the database holds it,
    // and the audit shows both actions as the admin token's.
    browser
        .click(
            &format!("#queues tr[data-queue='{q}'] button.pause"),
            "pause button",
        )
        .await;
    browser
        .wait_for(
            &format!("#queues tr[data-queue='{q}'][data-paused='true']"),
            "the queue shown paused",
        )
        .await;
    let mut c = pool.acquire().await.unwrap();
    assert!(phasefleet::queue::is_paused(&mut c, &q).await.unwrap());
    browser
        .wait_for(
            "#audit tr[data-action='pause_queue'][data-ok='true']",
            "the pause in the audit",
        )
        .await;
    let rows = phasefleet::store::operator_actions::operator_actions_list(&mut c, None, 500)
        .await
        .unwrap();
    let mine: Vec<_> = rows
        .iter()
        .filter(|r| {
            r.target.as_deref() == Some(&q) || r.target.as_deref() == Some(&dead.0.to_string())
        })
        .map(|r| (r.action.as_str(), r.actor.as_str(), r.via.as_str(), r.ok))
        .collect();
    assert_eq!(
        mine,
        vec![
            ("pause_queue", "admin-token-1", "api", true),
            ("requeue_job", "admin-token-1", "api", true),
        ],
        "{rows:?}"
    );
    let shown = browser
        .js(&format!("return [...document.querySelectorAll('#audit tr[data-audit]')].filter(r => r.textContent.includes('{q}')).map(r => r.textContent)"))
        .await;
    assert!(
        shown[0]
            .as_str()
            .is_some_and(|t| t.contains("admin-token-1") && t.contains("paused")),
        "{shown}"
    );
    screenshot(&browser, "fleet.png").await;

    // A job enqueued now waits: the queue is paused.
    let waiting = enqueue(
        &pool,
        phasefleet::queue::NewJob::new("noop", json!({})).queue(&q),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        job_state(&pool, waiting).await,
        phasefleet::queue::JobState::Ready
    );
    browser
        .click(
            &format!("#queues tr[data-queue='{q}'] button.resume"),
            "resume button",
        )
        .await;
    eventually(
        Duration::from_secs(30),
        "the waiting job runs once resumed",
        || async {
            (job_state(&pool, waiting).await == phasefleet::queue::JobState::Completed)
                .then_some(())
        },
    )
    .await;
    browser.quit().await;
    api.shutdown().await;
}

/// Keep what the browser shows for a person to look at: target/ui-screenshots/NAME.
async fn screenshot(browser: &Browser, name: &str) {
    let shot = browser
        .cmd(reqwest::Method::GET, "/screenshot", json!({}))
        .await;
    let Some(png) = shot.as_str() else { return };
    let dir = support::engine::repo("target/ui-screenshots");
    let _ = std::fs::create_dir_all(&dir);
    let encoded = format!("{name}.b64");
    let _ = std::fs::write(dir.join(&encoded), png);
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"base64 -d "$1" > "$2" && rm "$1""#)
        .args(["sh", &encoded, name])
        .current_dir(&dir)
        .status();
}

#[tokio::test]
async fn a_gate_with_a_deadline_shows_its_time_left_and_rejects_the_run_without_anyone_acting() {
    let pool = pool().await;
    let q = unique_queue("browser-deadline");
    let api = ApiServer::start(&pool, None).await;
    let mut req = support::engine::request(&q, json!({}));
    let gated = req
        .template
        .phases
        .iter_mut()
        .find(|p| !p.gates.is_empty())
        .unwrap();
    gated.deadline = Some("15s".into());
    gated.on_timeout = Some(phasefleet::workflow::OnTimeout::Reject);
    // The browser first: the deadline's clock starts when the gate is reached.
    let browser = Browser::start().await;
    browser.goto(&format!("{}/#token={ADMIN}", api.base)).await;
    browser.wait_for("table#runs", "runs list").await;
    let run = support::engine::submit(&pool, req).await;
    let fleet = Fleet::synthetic(&pool, &q, 1);
    support::engine::pending_approval(&pool, run).await;
    browser.goto(&format!("{}/#/approvals", api.base)).await;
    // The inbox counts down; nobody clicks.
    let shown = eventually(Duration::from_secs(20), "time left shown", || async {
        let v = browser
            .js(&format!("return [...document.querySelectorAll('#inbox > div')].filter(d => d.innerHTML.includes('{run}')).map(d => d.querySelector('.deadline')?.textContent)[0]"))
            .await;
        v.as_str().map(str::to_owned)
    })
    .await;
    assert!(shown.contains("s left, then reject"), "{shown}");
    browser.goto(&format!("{}/#/runs/{run}", api.base)).await;
    browser
        .wait_for(
            "#run-state [data-state='failed']",
            "the run failed at its deadline",
        )
        .await;
    let error = browser
        .js("return document.querySelector('#run-error').textContent")
        .await;
    assert!(
        error
            .as_str()
            .is_some_and(|e| e.contains("rejected by deadline")),
        "{error}"
    );
    let approvals = phasefleet::approval::for_run(&mut pool.acquire().await.unwrap(), run)
        .await
        .unwrap();
    assert_eq!(approvals[0].decided_by.as_deref(), Some("deadline"));

    // A 2 s deadline, watched on its run page from the start: it fails there with
    // nobody acting.
    let mut quick = support::engine::request(&q, json!({}));
    let gated = quick
        .template
        .phases
        .iter_mut()
        .find(|p| !p.gates.is_empty())
        .unwrap();
    gated.deadline = Some("2s".into());
    gated.on_timeout = Some(phasefleet::workflow::OnTimeout::Reject);
    let quick = support::engine::submit(&pool, quick).await;
    browser.goto(&format!("{}/#/runs/{quick}", api.base)).await;
    // On this run's page: until it renders, the first run's page (failed too) is shown.
    let failed_here = format!(
        "return document.querySelector('#main h2 code')?.textContent === '{quick}' \
         && document.querySelector(\"#run-state [data-state='failed']\") !== null"
    );
    eventually(
        Duration::from_secs(30),
        "the 2 s deadline failed the run, on its page",
        || async { (browser.js(&failed_here).await.as_bool() == Some(true)).then_some(()) },
    )
    .await;
    let mut c = pool.acquire().await.unwrap();
    let decided = phasefleet::approval::for_run(&mut c, quick).await.unwrap();
    assert_eq!(decided[0].decided_by.as_deref(), Some("deadline"));
    assert!(decided[0].decided_at.unwrap() - decided[0].created_at >= chrono::Duration::seconds(2));
    browser.quit().await;
    fleet.shutdown().await;
    api.shutdown().await;
}

#[tokio::test]
async fn the_run_page_charts_attempts_repairs_approval_waits_and_costs_and_renders_the_report() {
    let pool = pool().await;
    let q = unique_queue("browser-charts");
    let api = ApiServer::start(&pool, None).await;
    // The spec needs a repair; every call costs tokens; each phase takes a moment.
    let extra = json!({ "synthetic": { "tokens": 1500, "delay_ms": 300, "invalid_attempts": 1, "invalid_phases": ["spec"] } });
    let run = support::engine::submit(&pool, support::engine::request(&q, extra)).await;
    let fleet = Fleet::synthetic(&pool, &q, 1);
    let id = support::engine::pending_approval(&pool, run).await;
    // Let the wait for a human show on the chart before deciding.
    tokio::time::sleep(Duration::from_millis(800)).await;
    phasefleet::approval::decide(
        &pool,
        &phasefleet::teams::Scope::Fleet,
        id,
        phasefleet::approval::Action::Approve,
        None,
        Some("admin"),
    )
    .await
    .unwrap();
    support::engine::wait_for(&pool, run, &[phasefleet::state::RunState::Completed]).await;
    let browser = Browser::start().await;
    browser.goto(&format!("{}/#token={ADMIN}", api.base)).await;
    browser.wait_for("table#runs", "runs list").await;
    browser.goto(&format!("{}/#/runs/{run}", api.base)).await;
    browser.wait_for("#report h1", "the rendered report").await;
    browser
        .wait_for("svg.timeline-chart rect.bar", "the timeline chart")
        .await;
    let drawn = browser
        .js("return ['attempt', 'repair', 'wait'].map(c => [...document.querySelectorAll('svg.timeline-chart rect.bar.' + c)].map(r => r.dataset.phase))")
        .await;
    let drawn: Vec<Vec<String>> = serde_json::from_value(drawn).unwrap();
    // First attempts of spec, review and verify; the spec's repair; the review's wait.
    assert_eq!(drawn[0], ["spec", "review", "verify"], "{drawn:?}");
    assert_eq!(drawn[1], ["spec"], "{drawn:?}");
    assert_eq!(drawn[2], ["review"], "{drawn:?}");
    let bars = browser
        .js("return [document.querySelectorAll('svg.tokens rect').length, document.querySelectorAll('svg.cost rect').length]")
        .await;
    assert_eq!(bars, json!([3, 3]), "a token and a cost bar per phase");
    screenshot(&browser, "run-charts.png").await;

    // Hostile text in a report (a cancel reason; a model's words reach reports the
    // same way) is shown as text: no element, no script link.
    let hostile = support::engine::submit(&pool, support::engine::request(&q, json!({}))).await;
    support::engine::pending_approval(&pool, hostile).await;
    let reason =
        "<img src=x onerror=alert(1)><script>alert(2)</script> [click](javascript:alert(3))";
    phasefleet::cancel::cancel_run(
        &pool,
        &phasefleet::teams::Scope::Fleet,
        hostile,
        Some(reason),
    )
    .await
    .unwrap();
    browser
        .goto(&format!("{}/#/runs/{hostile}", api.base))
        .await;
    browser
        .wait_for("#report h1", "the hostile run's report")
        .await;
    let shown = browser
        .js("const r = document.querySelector('#report'); return [r.querySelectorAll('img, script, iframe, [onerror]').length, r.querySelectorAll('a[href^=\"javascript\" i]').length, r.textContent.includes('<img src=x onerror=alert(1)>')]")
        .await;
    assert_eq!(shown, json!([0, 0, true]), "the report's HTML: {shown}");
    browser.quit().await;
    fleet.shutdown().await;
    api.shutdown().await;
}
