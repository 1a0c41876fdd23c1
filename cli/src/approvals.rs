//! `phasefleet approvals …`: the inbox and decisions.

use crate::exit::{CliError, NOT_FOUND};
use crate::output::{Output, cell, print_one, print_rows};
use clap::Subcommand;
use phasefleet::ApprovalId;
use phasefleet::approval::{self, Action, Decided};
use phasefleet::teams::Scope;
use sqlx::PgPool;

#[derive(Debug, Subcommand)]
pub enum Approvals {
    /// Requests waiting on a human, oldest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One request with the artifact it asks a human to approve.
    Show { id: ApprovalId },
    /// Decide a request: approve, reject, abort or revise (revise needs --comment).
    Decide {
        id: ApprovalId,
        #[arg(long, value_parser = |s: &str| s.parse::<Action>())]
        action: Action,
        #[arg(long)]
        comment: Option<String>,
        /// Who decides (default $USER).
        #[arg(long)]
        by: Option<String>,
    },
}

pub async fn run(pool: &PgPool, cmd: Approvals, output: Output) -> Result<(), CliError> {
    match cmd {
        Approvals::List { limit } => list(pool, limit, output).await,
        Approvals::Show { id } => show(pool, id, output).await,
        Approvals::Decide {
            id,
            action,
            comment,
            by,
        } => {
            let by = by.unwrap_or_else(crate::submit::whoami);
            let out = approval::decide(
                pool,
                &Scope::Fleet,
                id,
                action,
                comment.as_deref(),
                Some(&by),
            )
            .await?;
            print_one(output, &out, |o| match o {
                Decided::Recorded => format!("recorded: {}", action.as_str()),
                Decided::AlreadyDecided => format!("already decided: {}", action.as_str()),
            })?;
            Ok(())
        }
    }
}

/// The inbox, with the artifact each request waits on (path and sha256).
async fn list(pool: &PgPool, limit: i64, output: Output) -> Result<(), CliError> {
    let mut conn = pool.acquire().await?;
    let rows = approval::pending(&mut conn, &Scope::Fleet, limit.clamp(1, 1000)).await?;
    let ids: Vec<i64> = rows.iter().map(|a| a.artifact_id).collect();
    let artifacts = phasefleet::store::artifacts::artifacts_get_many(&mut conn, &ids).await?;
    let artifact = |id: i64| {
        artifacts
            .iter()
            .find(|m| m.id == id)
            .map_or_else(String::new, |m| {
                let sha: String = m.sha256.as_deref().unwrap_or("").chars().take(12).collect();
                format!("{} {sha}", cell(m.path.as_deref().unwrap_or("(files)"), 64))
            })
    };
    let header = [
        "ID",
        "RUN",
        "PHASE",
        "ROUND",
        "GATES",
        "ARTIFACT",
        "WAITING SINCE",
    ];
    print_rows(output, &rows, &header, |a| {
        vec![
            a.id.to_string(),
            a.run_id.to_string(),
            cell(&a.phase_key, 64),
            a.round.to_string(),
            a.gates.join(","),
            artifact(a.artifact_id),
            a.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        ]
    })?;
    if matches!(output, Output::Table) && !rows.is_empty() {
        eprintln!("phasefleet approvals show ID prints the artifact to approve");
    }
    Ok(())
}

/// One request with the artifact it asks a human to approve.
async fn show(pool: &PgPool, id: ApprovalId, output: Output) -> Result<(), CliError> {
    let mut conn = pool.acquire().await?;
    let request = phasefleet::store::approvals::approvals_get(&mut conn, id)
        .await?
        .ok_or_else(|| CliError::new(NOT_FOUND, format!("approval {id} not found")))?;
    let artifact =
        phasefleet::views::artifact_content(&mut conn, request.run_id, request.artifact_id).await?;
    let (meta, content) = (
        artifact.as_ref().map(|a| &a.0),
        artifact.as_ref().and_then(|a| a.1.clone()),
    );
    let both = serde_json::json!({ "request": request, "artifact": meta, "content": content });
    print_one(output, &both, |_| {
        let path = meta
            .and_then(|m| m.path.clone())
            .unwrap_or_else(|| "(files: phasefleet runs files)".into());
        format!(
            "approval {id} — run {} phase {} round {}, gates {}: {}\n{path}\n{}",
            request.run_id,
            cell(&request.phase_key, 64),
            request.round,
            request.gates.join(","),
            request.action.map_or("pending", |a| a.as_str()),
            crate::output::terminal_text(content.as_deref().unwrap_or(""))
        )
    })?;
    Ok(())
}
