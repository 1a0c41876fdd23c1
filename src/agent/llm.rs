//! The agent loop for OpenAI-compatible backends: system prompt from the persona, the
//! phase envelope as the user message, file tools over the phase workspace, until the
//! model stops calling tools, the turn bound is reached, or the token fires. Before
//! every call: budget check (run still running, under budget) and a rate-limit permit.

use super::ledger::CallRecord;
use super::limits::Limiter;
use super::openai::{CallError, ChatClient, ChatRequest, Message, RetryPolicy, price_usd};
use super::{Agent, AgentError, AgentOutcome, AgentRequest, Workspace, tools};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct LlmAgent {
    limiter: Limiter,
    call_timeout: Duration,
    retry: RetryPolicy,
}

impl LlmAgent {
    #[must_use]
    pub fn new(limiter: Limiter, call_timeout: Duration, retry: RetryPolicy) -> Self {
        Self {
            limiter,
            call_timeout,
            retry,
        }
    }

    fn client(&self, req: &AgentRequest) -> Result<ChatClient, AgentError> {
        let p = &req.persona;
        let base_url = p
            .base_url
            .clone()
            .or_else(|| {
                std::env::var("PHASEFLEET_LLM_BASE_URL")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .ok_or_else(|| {
                AgentError::Fatal(format!(
                    "persona {:?} has no base_url and PHASEFLEET_LLM_BASE_URL is not set",
                    p.name
                ))
            })?;
        let key_env = p
            .api_key_env
            .clone()
            .unwrap_or_else(|| "PHASEFLEET_LLM_API_KEY".into());
        let api_key = std::env::var(&key_env).ok().filter(|k| !k.is_empty());
        if api_key.is_none() && p.api_key_env.is_some() {
            return Err(AgentError::Fatal(format!(
                "persona {:?} needs an API key in ${key_env}, which is not set",
                p.name
            )));
        }
        ChatClient::new(&base_url, api_key, self.call_timeout, self.retry)
            .map_err(|e| AgentError::Fatal(format!("building the HTTP client: {e}")))
    }
}

impl Agent for LlmAgent {
    async fn run(
        &self,
        req: AgentRequest,
        cancel: CancellationToken,
    ) -> Result<AgentOutcome, AgentError> {
        let client = self.client(&req)?;
        let p = &req.persona;
        let mut messages = vec![
            Message::text("system", p.system_prompt.clone()),
            Message::text("user", req.envelope.clone()),
        ];
        let mut ws = Workspace::default();
        let mut turns = 0;
        let transient = |e: sqlx::Error| AgentError::Transient(format!("ledger write failed: {e}"));
        for turn in 1..=p.max_turns {
            if cancel.is_cancelled() {
                return Err(AgentError::Cancelled);
            }
            req.ledger.check_budget().await?;
            let estimate: usize = messages
                .iter()
                .map(|m| m.content.as_deref().map_or(0, str::len))
                .sum::<usize>()
                / 4;
            let permit = self
                .limiter
                .acquire(
                    &p.model,
                    u64::try_from(estimate).unwrap_or(u64::MAX),
                    &cancel,
                )
                .await?;
            let chat = ChatRequest {
                model: p.model.clone(),
                messages: messages.clone(),
                tools: tools::definitions(),
                temperature: p.temperature,
                top_p: p.top_p,
                max_tokens: p.max_tokens,
                usage: Some(serde_json::json!({ "include": true })),
            };
            let turn_i = i32::try_from(turn).unwrap_or(i32::MAX);
            let log = TurnLog {
                ledger: &req.ledger,
                turn: turn_i,
                model: &p.model,
            };
            let (outcomes, result) = client.chat(&chat, &cancel, &log).await;
            drop(permit);
            turns = turn;
            for o in &outcomes {
                let u = o.usage.clone().unwrap_or_default();
                let cost = u.cost.unwrap_or_else(|| {
                    price_usd(&p.model, u.prompt_tokens, u.cached(), u.completion_tokens)
                });
                req.ledger
                    .record_call(&CallRecord {
                        turn: turn_i,
                        model: &p.model,
                        backend: "openai",
                        status: &o.status,
                        tokens_in: u.prompt_tokens,
                        tokens_out: u.completion_tokens,
                        tokens_cached: u.cached(),
                        tokens_reasoning: u.reasoning(),
                        cost_usd: if o.usage.is_some() { cost } else { 0.0 },
                        latency_ms: o.latency_ms,
                        provider_request_id: o.request_id.as_deref(),
                        error: o.error.as_deref(),
                        call_id: Some(o.call_id),
                    })
                    .await
                    .map_err(transient)?;
            }
            let response = match result {
                Ok(r) => r,
                Err(CallError::Cancelled) => return Err(AgentError::Cancelled),
                Err(e @ CallError::Refused { .. }) => {
                    return Err(AgentError::Fatal(format!("model {}: {e}", p.model)));
                }
                Err(e @ (CallError::Exhausted { .. } | CallError::Ledger(_))) => {
                    return Err(AgentError::Transient(format!("model {}: {e}", p.model)));
                }
            };
            let Some(choice) = response.choices.into_iter().next() else {
                return Err(AgentError::Transient(format!(
                    "model {} returned no choices",
                    p.model
                )));
            };
            let msg = choice.message;
            let calls = msg.tool_calls.clone();
            messages.push(Message {
                role: "assistant".into(),
                content: msg.content,
                tool_calls: msg.tool_calls,
                tool_call_id: None,
            });
            if calls.is_empty() {
                break;
            }
            for call in calls {
                let (ok, output) =
                    tools::execute(&mut ws, &call.function.name, &call.function.arguments);
                req.ledger
                    .record_tool(
                        turn_i,
                        &call.function.name,
                        &call.function.arguments,
                        ok,
                        &output,
                    )
                    .await
                    .map_err(transient)?;
                messages.push(Message::tool_result(&call.id, output));
            }
        }
        Ok(AgentOutcome {
            workspace: ws,
            turns,
        })
    }
}

/// Writes the ledger's `in_flight` row for each HTTP attempt of one turn.
struct TurnLog<'a> {
    ledger: &'a super::Ledger,
    turn: i32,
    model: &'a str,
}

impl super::openai::CallLog for TurnLog<'_> {
    async fn before_send(&self, call_id: uuid::Uuid) -> Result<(), String> {
        self.ledger
            .begin_call(self.turn, self.model, "openai", call_id)
            .await
            .map_err(|e| e.to_string())
    }
}
