//! The API contract, checked with tools nobody here wrote (pinned in
//! tests/contract/requirements.txt, installed by `scripts/contract-tools`):
//! - the served `/openapi.json` is valid OpenAPI 3.1 (openapi-spec-validator);
//! - schemathesis, every check on, all four phases (examples, coverage, fuzzing,
//!   stateful through the document's links), finds nothing;
//! - a client generated from the document (openapi-python-client), used as generated,
//!   submits a run, streams its events, approves its gate and reads its report.
//!
//! The schemathesis run has a database of its own: it registers and deletes personas
//! under made-up names (a fleet-wide table) and submits to the `default` queue, which
//! other tests on the shared database must not see.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;
use support::api::{ADMIN, ApiServer};
use support::engine::Fleet;
use tokio::process::Command;

/// No tool may run longer than this.
const TOOL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// Examples per operation for schemathesis (`CONTRACT_EXAMPLES` overrides).
const EXAMPLES: &str = "40";

/// The contract tools' bin directory, installed once per requirements file.
async fn contract_tools() -> PathBuf {
    let out = Command::new(support::engine::repo("scripts/contract-tools"))
        .output()
        .await
        .expect("scripts/contract-tools runs");
    assert!(
        out.status.success(),
        "scripts/contract-tools failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Run `program` from the repository root; its combined output, and whether it succeeded.
async fn run(program: &Path, args: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let started = Instant::now();
    let child = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(support::engine::repo(""))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(TOOL_DEADLINE, child)
        .await
        .unwrap_or_else(|_| panic!("{} ran longer than {TOOL_DEADLINE:?}", program.display()))
        .unwrap_or_else(|e| panic!("{} does not start: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{} finished in {:.1} s",
        program.display(),
        started.elapsed().as_secs_f64()
    );
    (out.status.success(), text)
}

async fn served_document(api: &ApiServer, dir: &Path) -> PathBuf {
    let doc = api.client(None).text("/openapi.json").await;
    let path = dir.join("openapi.json");
    std::fs::write(&path, doc).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_served_document_is_valid_openapi_3_1() {
    let tools = contract_tools().await;
    let pool = support::pool().await;
    let api = ApiServer::start(&pool, None).await;
    let scratch = support::TempDir::new("openapi-doc");
    let dir = scratch.path();
    let doc = served_document(&api, dir).await;
    let validator = tools.join("openapi-spec-validator");
    let (ok, output) = run(
        &validator,
        &["--validation-errors", "all", doc.to_str().unwrap()],
        &[],
    )
    .await;
    assert!(
        ok,
        "the served document is not valid OpenAPI 3.1:\n{output}"
    );

    // The validator must be able to fail: a query parameter declared `in: path`, the
    // defect this document once had, is refused.
    let mut broken: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&doc).unwrap()).unwrap();
    broken["paths"]["/v1/runs"]["get"]["parameters"][0]["in"] = "path".into();
    let broken_path = dir.join("broken.json");
    std::fs::write(&broken_path, broken.to_string()).unwrap();
    let (ok, output) = run(&validator, &[broken_path.to_str().unwrap()], &[]).await;
    assert!(!ok, "the validator accepted a broken document:\n{output}");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_nothing() {
    let tools = contract_tools().await;
    let pool = support::pool_on("phasefleet_contract").await;
    let api = ApiServer::start(&pool, None).await;
    let fleet = Fleet::synthetic(&pool, "default", 1);
    let examples = std::env::var("CONTRACT_EXAMPLES").unwrap_or_else(|_| EXAMPLES.into());
    let seed = std::env::var("CONTRACT_SEED").unwrap_or_else(|_| "1".into());
    let scratch = support::TempDir::new("schemathesis");
    let dir = scratch.path();
    let (ok, output) = run(
        &tools.join("schemathesis"),
        &[
            "--config-file",
            "tests/contract/schemathesis.toml",
            "run",
            &format!("{}/openapi.json", api.base),
            "--checks",
            "all",
            "--max-examples",
            &examples,
            "--seed",
            &seed,
            "--header",
            &format!("Authorization: Bearer {ADMIN}"),
        ],
        &[
            ("HOME", dir.display().to_string()),
            ("SCHEMATHESIS_REPORT_DIR", dir.display().to_string()),
        ],
    )
    .await;
    let summary: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("generated") || l.contains("Tested:") || l.contains("API Links"))
        .collect();
    eprintln!("schemathesis: {}", summary.join(" | "));
    assert!(ok, "schemathesis found problems:\n{output}");
    assert!(
        output.contains("Tested: 29"),
        "schemathesis did not test every operation:\n{output}"
    );
    fleet.shutdown().await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_generated_python_client_submits_streams_approves_and_reads_the_report() {
    let tools = contract_tools().await;
    let pool = support::pool().await;
    let api = ApiServer::start(&pool, None).await;
    let queue = support::unique_queue("contract");
    let fleet = Fleet::synthetic(&pool, &queue, 2);
    let scratch = support::TempDir::new("generated-client");
    let dir = scratch.path();
    let doc = served_document(&api, dir).await;
    let package = dir.join("phasefleet_client");
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (ok, output) = run(
        &tools.join("openapi-python-client"),
        &[
            "generate",
            "--path",
            doc.to_str().unwrap(),
            "--output-path",
            package.to_str().unwrap(),
            "--meta",
            "none",
            "--config",
            "tests/contract/client-config.yaml",
        ],
        &[("PATH", path.clone())],
    )
    .await;
    assert!(ok, "openapi-python-client failed:\n{output}");
    assert!(
        !output.contains("Warning") && !output.contains("WARNING") && !output.contains("Unable"),
        "the generator skipped parts of the document:\n{output}"
    );

    let (ok, output) = run(
        &tools.join("python"),
        // An admin token both submits and approves.
        &["tests/contract/drive_run.py", &api.base, ADMIN, &queue],
        &[("PYTHONPATH", dir.display().to_string()), ("PATH", path)],
    )
    .await;
    assert!(ok, "the generated client could not drive a run:\n{output}");
    let summary: serde_json::Value = serde_json::from_str(output.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("no summary ({e}):\n{output}"));
    assert_eq!(summary["state"], "completed", "{summary}");
    eprintln!("generated client: {summary}");
    fleet.shutdown().await;
    api.shutdown().await;
}
