//! `phasefleet submit`: a template file, persona files and inputs become a run.

use crate::exit::CliError;
use crate::output::{Output, print_one};
use clap::Args;
use phasefleet::input_files::{self, InputFile};
use phasefleet::submit::{Budget, RunInputs, SubmitRequest, Submitted};
use phasefleet::validate::SchemaRegistry;
use phasefleet::workflow::Definition;
use phasefleet::workflow::{Persona, WorkflowTemplate};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Workflow template (YAML or JSON).
    pub template: PathBuf,
    /// Persona files (YAML or JSON); every persona the template or a binding names.
    #[arg(long = "persona", required = true, num_args = 1..)]
    pub personas: Vec<PathBuf>,
    /// Requirements markdown file.
    #[arg(long)]
    pub requirements: Option<PathBuf>,
    /// Objective, as a JSON object.
    #[arg(long, default_value = "{}")]
    pub objective: String,
    /// Extra inputs, as a JSON object.
    #[arg(long, default_value = "{}")]
    pub extra: String,
    /// Override a role's persona for this run: ROLE=PERSONA (repeatable).
    #[arg(long = "bind", value_parser = parse_binding)]
    pub bindings: Vec<(String, String)>,
    #[arg(long)]
    pub budget_usd: Option<f64>,
    #[arg(long)]
    pub budget_tokens: Option<i64>,
    /// Submitting twice with the same key returns the first run.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[arg(long, default_value = "default")]
    pub queue: String,
    /// The team the run belongs to.
    #[arg(long, default_value = phasefleet::teams::DEFAULT_TEAM)]
    pub team: String,
    /// Give the agent the files under this directory (symbolic links and `.git` are
    /// left out).
    #[arg(long, value_name = "DIR", conflicts_with = "repo")]
    pub input_dir: Option<PathBuf>,
    /// Give the agent the tracked files of a git repository at a ref: PATH or PATH@REF
    /// (default ref HEAD).
    #[arg(long, value_name = "PATH[@REF]")]
    pub repo: Option<String>,
    /// Leave out input files whose path matches this glob (repeatable), e.g.
    /// 'target/**' or '*.png'.
    #[arg(long = "exclude", value_name = "GLOB")]
    pub excludes: Vec<String>,
    /// Queue the run even when no live worker serves a provider it needs.
    #[arg(long)]
    pub allow_unserved: bool,
}

pub fn parse_binding(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(r, p)| (r.trim().to_owned(), p.trim().to_owned()))
        .filter(|(r, p)| !r.is_empty() && !p.is_empty())
        .ok_or_else(|| format!("expected ROLE=PERSONA, got {s:?}"))
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::new(crate::exit::USAGE, msg)
}

/// The input files `--input-dir` or `--repo` name; what was left out goes to stderr.
fn input_files(args: &SubmitArgs) -> Result<Vec<InputFile>, CliError> {
    let exclude = input_files::excludes(&args.excludes).map_err(|e| usage(e.to_string()))?;
    let collected = match (&args.input_dir, &args.repo) {
        (Some(dir), _) => input_files::read_dir(dir, &exclude),
        (None, Some(repo)) => {
            // A path that exists is the repository itself (even with an '@' in it).
            let (path, rev) = if Path::new(repo).exists() {
                (repo.as_str(), "HEAD")
            } else {
                repo.rsplit_once('@').unwrap_or((repo.as_str(), "HEAD"))
            };
            input_files::read_git(Path::new(path), rev, &exclude)
        }
        (None, None) => return Ok(Vec::new()),
    }
    .map_err(|e| usage(e.to_string()))?;
    if !collected.skipped.is_empty() {
        eprintln!(
            "left out {} path(s): {}",
            collected.skipped.len(),
            collected.skipped.join(", ")
        );
    }
    Ok(collected.files)
}

pub fn build_request(args: &SubmitArgs, submitted_by: &str) -> Result<SubmitRequest, CliError> {
    let template = WorkflowTemplate::load(&args.template)?;
    let personas = args
        .personas
        .iter()
        .map(|p| Persona::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    let requirements = match &args.requirements {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| usage(format!("cannot read {}: {e}", p.display())))?,
        None => String::new(),
    };
    let json = |what: &str, s: &str| {
        serde_json::from_str(s).map_err(|e| usage(format!("--{what} is not JSON: {e}")))
    };
    Ok(SubmitRequest {
        template,
        personas,
        inputs: RunInputs {
            requirements,
            objective: json("objective", &args.objective)?,
            extra: json("extra", &args.extra)?,
        },
        files: input_files(args)?,
        bindings: args.bindings.iter().cloned().collect::<BTreeMap<_, _>>(),
        budget: Budget {
            usd: args.budget_usd,
            tokens: args.budget_tokens,
        },
        idempotency_key: args.idempotency_key.clone(),
        submitted_by: Some(submitted_by.to_owned()),
        queue: args.queue.clone(),
        team: args.team.clone(),
        // The CLI is the operator's: its personas may name a configured provider.
        may_define_provider_personas: true,
        allow_unserved: args.allow_unserved,
        traceparent: None,
    })
}

pub async fn submit(pool: &PgPool, req: SubmitRequest) -> Result<Submitted, CliError> {
    let schemas = SchemaRegistry::from_env()?;
    let config = phasefleet::config::Config::from_env()?;
    Ok(phasefleet::submit::submit(pool, &schemas, &config, req).await?)
}

pub async fn run(pool: &PgPool, args: SubmitArgs, output: Output) -> Result<(), CliError> {
    // Reading input files is blocking I/O.
    let req = tokio::task::block_in_place(|| build_request(&args, &whoami()))?;
    let submitted = submit(pool, req).await?;
    print_one(output, &submitted, |s| match s {
        Submitted::Created(id) => format!("{id}"),
        Submitted::Existing(id) => format!("{id} (existing run for this idempotency key)"),
    })?;
    Ok(())
}

pub fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "cli".into())
}
