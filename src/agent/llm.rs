//! The agent loop for OpenAI-compatible providers: system prompt from the persona, the
//! phase envelope as the user message, tools over the phase workspace, until the
//! expected artifact is accepted, the model stops, the turn bound is reached, or the
//! token fires. The artifact is accepted the moment it is valid, whichever way it
//! arrives: `submit_artifact`, `write_file`/`edit_file` to its path, or a reply that is
//! itself the JSON (bare or in one fenced block); an invalid one is answered with every
//! error so the model can fix it in the same attempt. A model that stops without
//! handing in the artifact is reminded once.
//!
//! Before every call: budget check (run still running, under budget) and a rate-limit
//! permit. Tools run off the async threads under a deadline, so a slow tool never stops
//! heartbeats, timeouts, cancel or shutdown.

use super::artifact::{SUBMIT_TOOL, artifact_in_reply};
use super::ledger::{BeginError, CallRecord};
use super::limits::Limiter;
use super::openai::{
    BeforeSend, CallError, CallOutcome, ChatRequest, ChatResponse, CostSource, Message, call_cost,
};
use super::providers::{Provider, Providers};
use super::tools::{self, ToolOutput};
use super::{Agent, AgentError, AgentOutcome, AgentRequest};
use crate::workflow::ArtifactVia;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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

/// What the loop does after a reply without tool calls.
enum AfterReply {
    /// The reply was the artifact, and it is valid.
    Accepted,
    /// Tell the model this and go on.
    Say(String),
    /// The conversation is over.
    Stop,
}

/// A conversation in progress: what it was opened with and what was said.
struct Conversation {
    provider: Arc<Provider>,
    /// The tool definitions offered on every call.
    tools: Box<RawValue>,
    messages: Vec<Message>,
    /// The model was reminded to hand in the artifact (once at most).
    reminded: bool,
}

impl Agent for LlmAgent {
    async fn run(
        &self,
        mut req: AgentRequest,
        cancel: CancellationToken,
    ) -> Result<AgentOutcome, AgentError> {
        // 1. Open the conversation: the tools, the persona's prompt, the envelope.
        let provider = self.provider(&req)?;
        let mut conversation = open(&mut req, provider)?;
        // 2. Take turns until the artifact is accepted, the model stops, or the turns
        //    run out.
        for turn in 1..=req.persona.max_turns {
            if cancel.is_cancelled() {
                return Err(AgentError::Cancelled);
            }
            let numbered = i32::try_from(turn).unwrap_or(i32::MAX);
            let turn_ended = self.take_turn(&req, &mut conversation, numbered, &cancel);
            if let Some(accepted) = turn_ended.await? {
                return Ok(AgentOutcome {
                    turns: turn,
                    accepted,
                });
            }
        }
        Ok(AgentOutcome {
            turns: req.persona.max_turns,
            accepted: false,
        })
    }
}

/// The conversation's opening: the tools (`submit_artifact` among them when the persona
/// hands in its artifact by tool), the system prompt and the envelope.
fn open(req: &mut AgentRequest, provider: Arc<Provider>) -> Result<Conversation, AgentError> {
    let via_tool = req.persona.artifact_via == ArtifactVia::Tool;
    let submit = req
        .artifact
        .as_ref()
        .filter(|_| via_tool)
        .map(|a| (a, provider.config.strict_tools));
    let tools = tools::definitions(submit)
        .map_err(|e| AgentError::Fatal(format!("tool definitions: {e}")))?;
    let messages = vec![
        Message::text("system", req.persona.system_prompt.clone()),
        // Moved, not copied: the conversation is the only reader from here on.
        Message::text("user", std::mem::take(&mut req.envelope)),
    ];
    Ok(Conversation {
        provider,
        tools,
        messages,
        reminded: false,
    })
}

impl LlmAgent {
    /// One turn: call the model, then run its tool calls or answer its reply.
    /// `Some(accepted)` when the conversation is over.
    async fn take_turn(
        &self,
        req: &AgentRequest,
        conversation: &mut Conversation,
        turn: i32,
        cancel: &CancellationToken,
    ) -> Result<Option<bool>, AgentError> {
        // Database steps are boxed: a turn waiting on the model holds only the HTTP
        // call's state.
        Box::pin(req.ledger.check_budget()).await?;
        let reply = self
            .call_model(
                req,
                &conversation.provider,
                &conversation.messages,
                &conversation.tools,
                turn,
                cancel,
            )
            .await?;
        let calls = reply.tool_calls.clone();
        let text = reply.content.clone().unwrap_or_default();
        conversation.messages.push(reply);
        if calls.is_empty() {
            let after = Box::pin(after_reply(
                req,
                &text,
                turn,
                &mut conversation.reminded,
                cancel,
            ));
            return Ok(match after.await? {
                AfterReply::Accepted => Some(true),
                AfterReply::Say(next) => {
                    conversation.messages.push(Message::text("user", next));
                    None
                }
                AfterReply::Stop => Some(false),
            });
        }
        for call in calls {
            let name = &call.function.name;
            let out = Box::pin(run_tool(req, name, &call.function.arguments, turn, cancel)).await?;
            conversation
                .messages
                .push(Message::tool_result(&call.id, out.text));
            if out.accepted {
                return Ok(Some(true));
            }
        }
        Ok(None)
    }
}

/// A reply without tool calls: the artifact itself (checked as a submission), or the
/// model stopping; one reminder when the artifact is still missing or invalid.
async fn after_reply(
    req: &AgentRequest,
    text: &str,
    turn: i32,
    reminded: &mut bool,
    cancel: &CancellationToken,
) -> Result<AfterReply, AgentError> {
    let Some(artifact) = &req.artifact else {
        // A files-only phase: remind once if nothing was written yet.
        let wrote_nothing = req.workspace.lock().written().next().is_none();
        if wrote_nothing && !std::mem::replace(reminded, true) {
            return Ok(AfterReply::Say(
                "You have not written any file yet, and this phase's output is the files you write. Write them with write_file, then reply with one sentence.".into(),
            ));
        }
        return Ok(AfterReply::Stop);
    };
    if let Some(value) = artifact_in_reply(text) {
        let out = run_tool(req, SUBMIT_TOOL, &value.to_string(), turn, cancel).await?;
        return Ok(if out.accepted {
            AfterReply::Accepted
        } else {
            AfterReply::Say(out.text)
        });
    }
    if std::mem::replace(reminded, true) {
        return Ok(AfterReply::Stop);
    }
    let how = if req.persona.artifact_via == ArtifactVia::Tool {
        format!(
            "Call the `{SUBMIT_TOOL}` tool with the artifact as its arguments (or write it to {} with `write_file`).",
            artifact.path
        )
    } else {
        "Reply with the artifact as a single JSON object and nothing else.".to_owned()
    };
    Ok(AfterReply::Say(format!(
        "The artifact {} has not been accepted yet, so the phase is not done. {how}",
        artifact.path
    )))
}

impl LlmAgent {
    /// One model call (with its retries): a rate-limit permit, the request, the ledger
    /// rows of every HTTP attempt, a progress line in the log, and the assistant's reply.
    async fn call_model(
        &self,
        req: &AgentRequest,
        provider: &Provider,
        messages: &[Message],
        tools: &RawValue,
        turn: i32,
        cancel: &CancellationToken,
    ) -> Result<Message, AgentError> {
        let p = &req.persona;
        let estimate = messages
            .iter()
            .map(|m| m.content.as_deref().map_or(0, str::len))
            .sum::<usize>()
            / 4;
        let permit = Box::pin(self.limiter.acquire(
            &p.model,
            u64::try_from(estimate).unwrap_or(u64::MAX),
            cancel,
        ))
        .await?;
        let chat = chat_request(req, provider, messages, tools);
        let log = TurnLog {
            ledger: &req.ledger,
            turn,
            model: &p.model,
        };
        let span =
            tracing::info_span!("model_call", model = %p.model, provider = %provider.name, turn);
        let (outcomes, result) = provider
            .client
            .chat(&chat, cancel, &log)
            .instrument(span)
            .await;
        drop(permit);
        Box::pin(record_outcomes(req, provider, turn, &outcomes)).await?;
        let response = result.map_err(|e| call_failed(&p.model, e))?;
        log_turn(turn, &outcomes, &response);
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

/// The request for one turn: a repair attempt may sample differently (persona
/// `repair_temperature`, `seed` + attempt), and with `artifact_via: response_format`
/// the reply is constrained to the artifact's schema.
fn chat_request<'a>(
    req: &'a AgentRequest,
    provider: &Provider,
    messages: &'a [Message],
    tools: &'a RawValue,
) -> ChatRequest<'a> {
    let p = &req.persona;
    let temperature = if req.attempt > 1 {
        p.repair_temperature.or(p.temperature)
    } else {
        p.temperature
    };
    let response_format = req
        .artifact
        .as_ref()
        .filter(|_| p.artifact_via == ArtifactVia::ResponseFormat)
        .map(|a| a.response_format(provider.config.strict_tools));
    ChatRequest {
        model: &p.model,
        messages,
        tools,
        temperature,
        top_p: p.top_p,
        max_tokens: p.max_tokens,
        seed: p.seed.map(|s| s.saturating_add(i64::from(req.attempt) - 1)),
        response_format,
        usage: Some(serde_json::json!({ "include": true })),
    }
}

/// One line per model turn at info: what the model cost and what it asked for.
fn log_turn(turn: i32, outcomes: &[CallOutcome], response: &ChatResponse) {
    let usage = response.usage.clone().unwrap_or_default();
    let choice = response.choices.first();
    let tools: Vec<&str> = choice
        .map(|c| {
            c.message
                .tool_calls
                .iter()
                .map(|t| t.function.name.as_str())
                .collect()
        })
        .unwrap_or_default();
    let latency_ms: i64 = outcomes.iter().map(|o| o.latency_ms).sum();
    tracing::info!(
        turn,
        tokens_in = usage.prompt(),
        tokens_out = usage.completion(),
        latency_ms,
        http_attempts = outcomes.len(),
        tools = %tools.join(","),
        finish = choice.and_then(|c| c.finish_reason.as_deref()).unwrap_or(""),
        "model turn"
    );
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

/// Finish the ledger row of every HTTP attempt of one turn, with its trusted cost
/// (the configured price, else the cached price list). A call nothing prices, in a run
/// with a USD budget, ends the attempt: the budget would no longer hold.
async fn record_outcomes(
    req: &AgentRequest,
    provider: &Provider,
    turn: i32,
    outcomes: &[CallOutcome],
) -> Result<(), AgentError> {
    let model = req.persona.model.as_str();
    let price = match provider.price(model) {
        Some(p) => Some(p),
        None => req.ledger.list_price(&provider.name, model).await?,
    };
    let (mut unpriced, mut unmetered) = (false, false);
    for o in outcomes {
        let usage = o.usage.clone().unwrap_or_default();
        let cost = call_cost(&usage, price);
        unpriced |= o.usage.is_some() && cost.source == CostSource::Unpriced;
        // A reply that reports no usage spent what nobody counted.
        unmetered |= o.status == "ok" && o.usage.is_none();
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
    if unpriced || unmetered {
        let (usd, tokens) = req.ledger.budgets().await?;
        if unmetered && (usd || tokens) {
            return Err(AgentError::Fatal(format!(
                "provider {} reported no token usage for model {model}; the run's budget cannot be enforced",
                provider.name
            )));
        }
        if unpriced && usd {
            return Err(AgentError::Fatal(format!(
                "model {model} on provider {} has no price and reported no cost; the run's USD budget cannot be enforced",
                provider.name
            )));
        }
    }
    Ok(())
}

/// Run one tool call on a blocking thread under [`TOOL_DEADLINE`] and audit it. The
/// tool works on the shared workspace; one that overruns ends the attempt (what was
/// written before stays for the engine to validate).
async fn run_tool(
    req: &AgentRequest,
    name: &str,
    arguments: &str,
    turn: i32,
    cancel: &CancellationToken,
) -> Result<ToolOutput, AgentError> {
    let span = tracing::info_span!("tool_call", tool = %tools::printable(name, 64), turn);
    Box::pin(run_tool_in(req, name, arguments, turn, cancel))
        .instrument(span)
        .await
}

async fn run_tool_in(
    req: &AgentRequest,
    name: &str,
    arguments: &str,
    turn: i32,
    cancel: &CancellationToken,
) -> Result<ToolOutput, AgentError> {
    let (workspace, artifact) = (req.workspace.clone(), req.artifact.clone());
    let (tool, args) = (name.to_owned(), arguments.to_owned());
    let task = tokio::task::spawn_blocking(move || {
        tools::execute(&mut workspace.lock(), &tool, &args, artifact.as_ref())
    });
    let out = tokio::select! {
        () = cancel.cancelled() => return Err(AgentError::Cancelled),
        () = tokio::time::sleep(TOOL_DEADLINE) => return Err(AgentError::Fatal(format!(
            "tool {} ran past its {} s deadline",
            tools::printable(name, 64),
            TOOL_DEADLINE.as_secs()
        ))),
        joined = task => joined.map_err(|e| AgentError::Fatal(format!("tool {} failed: {e}", tools::printable(name, 64))))?,
    };
    tracing::debug!(turn, tool = %tools::printable(name, 64), ok = out.ok, accepted = out.accepted, "tool call");
    req.ledger
        .record_tool(turn, name, arguments, out.ok, &out.text)
        .await
        .map_err(ledger_failed)?;
    Ok(out)
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
