//! One logical model call = one or more HTTP attempts. Retries 429, 5xx, timeouts and
//! connection errors with exponential backoff and jitter, honouring `Retry-After`; never
//! retries 400/401/402/403/404 (a clear terminal error). A cancel stops it at once,
//! mid-request or mid-backoff. Every HTTP attempt is returned for the ledger.

use super::types::{ChatRequest, ChatResponse, Usage};
use crate::queue::Backoff;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// HTTP attempts per logical call, including the first.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Longest `Retry-After` we honour; longer asks are capped.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            backoff: Backoff {
                base: Duration::from_millis(500),
                max: Duration::from_secs(20),
            },
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// Records an HTTP attempt before it is sent (the ledger's `in_flight` row).
pub trait CallLog: Sync {
    fn before_send(
        &self,
        call_id: uuid::Uuid,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

/// What one HTTP attempt did (a ledger row).
#[derive(Debug, Clone)]
pub struct CallOutcome {
    /// Sent to the provider as `X-Phasefleet-Call`; the ledger row's key.
    pub call_id: uuid::Uuid,
    /// `ok`, `http_<code>`, `timeout`, `connect_error`, `decode_error`, `cancelled`.
    pub status: String,
    pub latency_ms: i64,
    pub request_id: Option<String>,
    pub usage: Option<Usage>,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The attempt could not be recorded before sending; nothing was sent.
    #[error("could not record the call in the ledger: {0}")]
    Ledger(String),
    /// The provider refused in a way retrying cannot fix.
    #[error("provider refused the request with HTTP {code}: {body}")]
    Refused { code: u16, body: String },
    #[error("gave up after {attempts} attempt(s): {last}")]
    Exhausted { attempts: u32, last: String },
    #[error("cancelled")]
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
    timeout: Duration,
    retry: RetryPolicy,
}

impl ChatClient {
    /// `base_url` like `https://openrouter.ai/api/v1` (the `/chat/completions` suffix is added).
    ///
    /// # Errors
    /// When the HTTP client cannot be built (TLS setup).
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        timeout: Duration,
        retry: RetryPolicy,
    ) -> Result<Self, reqwest::Error> {
        // reqwest is built without a default crypto provider; use ring (pure Rust + asm,
        // no cmake). Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            timeout,
            retry,
        })
    }

    /// Make one logical call. Returns every HTTP attempt's outcome and the result.
    /// `log` records each HTTP attempt before it is sent; if it fails, nothing is sent.
    pub async fn chat(
        &self,
        req: &ChatRequest,
        cancel: &CancellationToken,
        log: &impl CallLog,
    ) -> (Vec<CallOutcome>, Result<ChatResponse, CallError>) {
        let mut outcomes = Vec::new();
        let url = format!("{}/chat/completions", self.base_url);
        for attempt in 1..=self.retry.max_attempts {
            if cancel.is_cancelled() {
                return (outcomes, Err(CallError::Cancelled));
            }
            let call_id = uuid::Uuid::new_v4();
            if let Err(e) = log.before_send(call_id).await {
                return (outcomes, Err(CallError::Ledger(e)));
            }
            let started = Instant::now();
            let mut builder = self
                .http
                .post(&url)
                .timeout(self.timeout)
                .header("X-Phasefleet-Call", call_id.to_string())
                .json(req);
            if let Some(key) = &self.api_key {
                builder = builder.bearer_auth(key);
            }
            let sent = tokio::select! {
                () = cancel.cancelled() => {
                    outcomes.push(outcome(call_id, "cancelled", started, None, None, Some("cancelled mid-request".into())));
                    return (outcomes, Err(CallError::Cancelled));
                }
                r = send(builder) => r,
            };
            let (retry_after, last) = match sent {
                Ok(Sent::Ok {
                    response,
                    request_id,
                }) => {
                    let usage = response.usage.clone();
                    outcomes.push(outcome(call_id, "ok", started, request_id, usage, None));
                    return (outcomes, Ok(response));
                }
                Ok(Sent::Status {
                    code,
                    body,
                    retry_after,
                    request_id,
                }) => {
                    let msg = format!("HTTP {code}: {}", truncate(&body, 500));
                    outcomes.push(outcome(
                        call_id,
                        &format!("http_{code}"),
                        started,
                        request_id,
                        None,
                        Some(msg.clone()),
                    ));
                    if !(code == 429 || code == 408 || code >= 500) {
                        return (
                            outcomes,
                            Err(CallError::Refused {
                                code,
                                body: truncate(&body, 2000),
                            }),
                        );
                    }
                    (retry_after, msg)
                }
                Err(Failure { status, message }) => {
                    outcomes.push(outcome(
                        call_id,
                        status,
                        started,
                        None,
                        None,
                        Some(message.clone()),
                    ));
                    if status == "decode_error" {
                        return (
                            outcomes,
                            Err(CallError::Exhausted {
                                attempts: attempt,
                                last: message,
                            }),
                        );
                    }
                    (None, message)
                }
            };
            if attempt == self.retry.max_attempts {
                return (
                    outcomes,
                    Err(CallError::Exhausted {
                        attempts: attempt,
                        last,
                    }),
                );
            }
            let i = i32::try_from(attempt).unwrap_or(i32::MAX);
            let wait = retry_after.map_or_else(
                || self.retry.backoff.delay(i),
                |ra| ra.min(self.retry.max_retry_after),
            );
            tracing::warn!(attempt, wait_ms = wait.as_millis(), error = %last, "model call failed; retrying");
            tokio::select! {
                () = cancel.cancelled() => return (outcomes, Err(CallError::Cancelled)),
                () = tokio::time::sleep(wait) => {}
            }
        }
        (
            outcomes,
            Err(CallError::Exhausted {
                attempts: self.retry.max_attempts,
                last: "no attempt made".into(),
            }),
        )
    }
}

enum Sent {
    Ok {
        response: ChatResponse,
        request_id: Option<String>,
    },
    Status {
        code: u16,
        body: String,
        retry_after: Option<Duration>,
        request_id: Option<String>,
    },
}

struct Failure {
    status: &'static str,
    message: String,
}

async fn send(builder: reqwest::RequestBuilder) -> Result<Sent, Failure> {
    let resp = builder.send().await.map_err(|e| Failure {
        status: if e.is_timeout() {
            "timeout"
        } else {
            "connect_error"
        },
        message: e.to_string(),
    })?;
    let code = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let request_id = header("x-request-id").or_else(|| header("x-generation-id"));
    let retry_after = header("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64);
    let body = resp.text().await.map_err(|e| Failure {
        status: if e.is_timeout() {
            "timeout"
        } else {
            "connect_error"
        },
        message: format!("reading the response body: {e}"),
    })?;
    if !(200..300).contains(&code) {
        return Ok(Sent::Status {
            code,
            body,
            retry_after,
            request_id,
        });
    }
    let response: ChatResponse = serde_json::from_str(&body).map_err(|e| Failure {
        status: "decode_error",
        message: format!(
            "response is not a chat completion: {e}: {}",
            truncate(&body, 300)
        ),
    })?;
    let request_id = request_id.or_else(|| response.id.clone());
    Ok(Sent::Ok {
        response,
        request_id,
    })
}

fn outcome(
    call_id: uuid::Uuid,
    status: &str,
    started: Instant,
    request_id: Option<String>,
    usage: Option<Usage>,
    error: Option<String>,
) -> CallOutcome {
    CallOutcome {
        call_id,
        status: status.to_owned(),
        latency_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        request_id,
        usage,
        error,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
