//! The agent loop for OpenAI-compatible providers: system prompt from the persona, the
//! phase envelope as the user message, file tools over the phase workspace, until the
//! model stops calling tools, the turn bound is reached, or the token fires. Before
//! every call: budget check (run still running, under budget) and a rate-limit permit.
//! Tools run off the async threads under a deadline, so a slow tool never stops
//! heartbeats, timeouts, cancel or shutdown.

use super::ledger::{BeginError, CallRecord, Ledger};
use super::limits::Limiter;
use super::openai::{
    BeforeSend, CallError, CallOutcome, ChatRequest, Message, ToolCall, call_cost,
};
use super::providers::{Provider, Providers};
use super::{Agent, AgentError, AgentOutcome, AgentRequest, Workspace, tools};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long one tool call may run.
pub const TOOL_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct LlmAgent {
    providers: Providers,
    limiter: Limiter,
}

impl LlmAgent {
    #[must_use]
    pub fn new(providers: Providers, limiter: Limiter) -> Self {
        Self { providers, limiter }
    }

    #[must_use]
    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    fn provider(&self, req: &AgentRequest) -> Result<Arc<Provider>, AgentError> {
        let p = &req.persona;
        let name = p
            .provider
            .as_deref()
            .ok_or_else(|| AgentError::Fatal(format!("persona {:?} names no provider", p.name)))?;
        let provider = self.providers.get(name).ok_or_else(|| {
            AgentError::Fatal(format!(
                "provider {name:?} is not configured on this worker, or its key is not set"
            ))
        })?;
        if provider.config.model(&p.model).is_none() {
            return Err(AgentError::Fatal(format!(
                "provider {name:?} does not allow model {:?}",
                p.model
            )));
        }
        Ok(provider.clone())
    }
}

impl Agent for LlmAgent {
    async fn run(
        &self,
        req: AgentRequest,
        cancel: CancellationToken,
    ) -> Result<AgentOutcome, AgentError> {
        let provider = self.provider(&req)?;
        let mut messages = vec![
            Message::text("system", req.persona.system_prompt.clone()),
            Message::text("user", req.envelope.clone()),
        ];
        let mut ws = Workspace::default();
        let mut turns = 0;
        for turn in 1..=req.persona.max_turns {
            if cancel.is_cancelled() {
                return Err(AgentError::Cancelled);
            }
            req.ledger.check_budget().await?;
            turns = turn;
            let turn = i32::try_from(turn).unwrap_or(i32::MAX);
            let reply = self
                .call_model(&req, &provider, &messages, turn, &cancel)
                .await?;
            let calls = reply.tool_calls.clone();
            messages.push(reply);
            if calls.is_empty() {
                break;
            }
            for call in calls {
                let (next, output) = run_tool(ws, &call, &req.ledger, turn, &cancel).await?;
                ws = next;
                messages.push(Message::tool_result(&call.id, output));
            }
        }
        Ok(AgentOutcome {
            workspace: ws,
            turns,
        })
    }
}

impl LlmAgent {
    /// One model call (with its retries): a rate-limit permit, the request, the ledger
    /// rows of every HTTP attempt, and the assistant's reply.
    async fn call_model(
        &self,
        req: &AgentRequest,
        provider: &Provider,
        messages: &[Message],
        turn: i32,
        cancel: &CancellationToken,
    ) -> Result<Message, AgentError> {
        let p = &req.persona;
        let estimate = messages
            .iter()
            .map(|m| m.content.as_deref().map_or(0, str::len))
            .sum::<usize>()
            / 4;
        let permit = self
            .limiter
            .acquire(
                &p.model,
                u64::try_from(estimate).unwrap_or(u64::MAX),
                cancel,
            )
            .await?;
        let chat = ChatRequest {
            model: p.model.clone(),
            messages: messages.to_vec(),
            tools: tools::definitions(),
            temperature: p.temperature,
            top_p: p.top_p,
            max_tokens: p.max_tokens,
            usage: Some(serde_json::json!({ "include": true })),
        };
        let log = TurnLog {
            ledger: &req.ledger,
            turn,
            model: &p.model,
        };
        let (outcomes, result) = provider.client.chat(&chat, cancel, &log).await;
        drop(permit);
        record_outcomes(req, provider, turn, &outcomes).await?;
        let response = result.map_err(|e| call_failed(&p.model, e))?;
        let choice = response.choices.into_iter().next().ok_or_else(|| {
            AgentError::Transient(format!("model {} returned no choices", p.model))
        })?;
        Ok(Message {
            role: "assistant".into(),
            content: choice.message.content,
            tool_calls: choice.message.tool_calls,
            tool_call_id: None,
        })
    }
}

fn ledger_failed(e: sqlx::Error) -> AgentError {
    AgentError::Transient(format!("ledger write failed: {e}"))
}

/// What a failed call means for the attempt.
fn call_failed(model: &str, e: CallError) -> AgentError {
    match e {
        CallError::Cancelled => AgentError::Cancelled,
        e @ (CallError::Refused { .. } | CallError::BadResponse(_)) => {
            AgentError::Fatal(format!("model {model}: {e}"))
        }
        e @ (CallError::Exhausted { .. } | CallError::Ledger(_)) => {
            AgentError::Transient(format!("model {model}: {e}"))
        }
    }
}

/// Finish the ledger row of every HTTP attempt of one turn, with its trusted cost.
async fn record_outcomes(
    req: &AgentRequest,
    provider: &Provider,
    turn: i32,
    outcomes: &[CallOutcome],
) -> Result<(), AgentError> {
    let model = req.persona.model.as_str();
    for o in outcomes {
        let usage = o.usage.clone().unwrap_or_default();
        let cost = call_cost(&usage, provider.price(model));
        req.ledger
            .record_call(&CallRecord {
                turn,
                model,
                backend: "openai",
                status: &o.status,
                tokens_in: usage.prompt(),
                tokens_out: usage.completion(),
                tokens_cached: usage.cached(),
                tokens_reasoning: usage.reasoning(),
                cost_usd: if o.usage.is_some() { cost.usd } else { 0.0 },
                latency_ms: o.latency_ms,
                provider_request_id: o.request_id.as_deref(),
                error: o.error.as_deref(),
                call_id: Some(o.call_id),
                reported_cost_usd: cost.reported,
                cost_source: o.usage.is_some().then_some(cost.source.as_str()),
            })
            .await
            .map_err(ledger_failed)?;
    }
    Ok(())
}

/// Run one tool call on a blocking thread under [`TOOL_DEADLINE`] and audit it; the
/// workspace travels there and back. A tool that overruns ends the attempt (its
/// workspace is gone with it). Returns the workspace and the tool's output.
async fn run_tool(
    ws: Workspace,
    call: &ToolCall,
    ledger: &Ledger,
    turn: i32,
    cancel: &CancellationToken,
) -> Result<(Workspace, String), AgentError> {
    let name = &call.function.name;
    let (tool, args) = (name.clone(), call.function.arguments.clone());
    let task = tokio::task::spawn_blocking(move || {
        let mut ws = ws;
        let (ok, out) = tools::execute(&mut ws, &tool, &args);
        (ws, ok, out)
    });
    let (ws, ok, output) = tokio::select! {
        () = cancel.cancelled() => return Err(AgentError::Cancelled),
        () = tokio::time::sleep(TOOL_DEADLINE) => return Err(AgentError::Fatal(format!(
            "tool {} ran past its {} s deadline",
            tools::printable(name, 64),
            TOOL_DEADLINE.as_secs()
        ))),
        joined = task => joined.map_err(|e| AgentError::Fatal(format!("tool {} failed: {e}", tools::printable(name, 64))))?,
    };
    ledger
        .record_tool(turn, name, &call.function.arguments, ok, &output)
        .await
        .map_err(ledger_failed)?;
    Ok((ws, output))
}

/// Writes the ledger's `in_flight` row for each HTTP attempt of one turn.
struct TurnLog<'a> {
    ledger: &'a super::Ledger,
    turn: i32,
    model: &'a str,
}

impl super::openai::CallLog for TurnLog<'_> {
    async fn before_send(&self, call_id: uuid::Uuid) -> Result<(), BeforeSend> {
        match self
            .ledger
            .begin_call(self.turn, self.model, "openai", call_id)
            .await
        {
            Ok(()) => Ok(()),
            Err(BeginError::RunEnded) => Err(BeforeSend::RunEnded),
            Err(BeginError::Db(e)) => Err(BeforeSend::Ledger(e.to_string())),
        }
    }
}
