//! One logical model call = one or more HTTP attempts. Retries 429, 408, 5xx, timeouts
//! and connection errors with exponential backoff and jitter, honouring `Retry-After`;
//! never retries other 4xx (a clear terminal error). A cancel stops it at once,
//! mid-request or mid-backoff. Every HTTP attempt is returned for the ledger.
//!
//! What a provider sends is untrusted: the body is read as a stream up to a cap, and no
//! part of an error body ever reaches a user-visible message (status, the provider's
//! request id and a fixed description only; the body goes to the worker's log).

use super::types::{ChatRequest, ChatResponse, Usage};
use crate::queue::Backoff;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Default cap on a response body.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

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

/// Records an HTTP attempt before it is sent (the ledger's `in_flight` row). An error
/// means the request must not be sent.
pub trait CallLog: Sync {
    fn before_send(
        &self,
        call_id: uuid::Uuid,
    ) -> impl std::future::Future<Output = Result<(), BeforeSend>> + Send;
}

/// Why [`CallLog::before_send`] refused.
#[derive(Debug)]
pub enum BeforeSend {
    /// The run is no longer active: nothing may be sent for it.
    RunEnded,
    /// The row could not be written.
    Ledger(String),
}

/// What one HTTP attempt did (a ledger row).
#[derive(Debug, Clone)]
pub struct CallOutcome {
    /// Sent to the provider as `X-Phasefleet-Call`; the ledger row's key.
    pub call_id: uuid::Uuid,
    /// `ok`, `http_<code>`, `timeout`, `connect_error`, `decode_error`, `too_large`,
    /// `cancelled`.
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
    #[error("{message}")]
    Refused { code: u16, message: String },
    /// The response was larger than the cap, or not a chat completion.
    #[error("{0}")]
    BadResponse(String),
    #[error("gave up after {attempts} HTTP attempt(s) of this call: {last}")]
    Exhausted { attempts: u32, last: String },
    #[error("cancelled")]
    Cancelled,
}

/// A client for one provider: one connection pool and TLS setup shared by every phase
/// of the worker. Redirects are never followed.
#[derive(Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    url: String,
    api_key: Option<ApiKey>,
    timeout: Duration,
    retry: RetryPolicy,
    max_response_bytes: usize,
}

impl std::fmt::Debug for ChatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatClient")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// An API key read from the environment; never printed.
#[derive(Clone)]
pub struct ApiKey(pub String);

impl ChatClient {
    /// `base_url` like `https://openrouter.ai/api/v1` (the `/chat/completions` suffix is
    /// added). `http2`: HTTP/2 with prior knowledge, every call on one connection;
    /// otherwise HTTP/1.1 only (see `ProviderConfig::http2` for the trade-off).
    ///
    /// # Errors
    /// When the HTTP client cannot be built (TLS setup).
    pub fn new(
        base_url: &str,
        api_key: Option<ApiKey>,
        timeout: Duration,
        retry: RetryPolicy,
        http2: bool,
    ) -> Result<Self, reqwest::Error> {
        // reqwest is built without a default crypto provider; use ring (pure Rust + asm,
        // no cmake). Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none());
        // Never negotiated: a server's stream limit would silently cap the calls in
        // flight, so HTTP/2 is the operator's choice.
        let builder = if http2 {
            builder.http2_prior_knowledge()
        } else {
            builder.http1_only()
        };
        let http = builder.build()?;
        Ok(Self {
            http,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            api_key,
            timeout,
            retry,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        })
    }

    /// Cap response bodies at `bytes`.
    #[must_use]
    pub fn with_max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// Make one logical call. Returns every HTTP attempt's outcome and the result.
    /// `log` records each HTTP attempt before it is sent; if it refuses, nothing is sent.
    pub async fn chat(
        &self,
        req: &ChatRequest<'_>,
        cancel: &CancellationToken,
        log: &impl CallLog,
    ) -> (Vec<CallOutcome>, Result<ChatResponse, CallError>) {
        let mut outcomes = Vec::new();
        // Serialized once; every HTTP attempt shares these bytes.
        let body = match serde_json::to_vec(req) {
            // Held for the whole call: no spare capacity.
            Ok(b) => bytes::Bytes::from(b.into_boxed_slice()),
            Err(e) => return (outcomes, Err(CallError::BadResponse(e.to_string()))),
        };
        let max = self.retry.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (retry_after, last) = match self.attempt(&body, cancel, log, &mut outcomes).await {
                Step::Done(result) => return (outcomes, result),
                Step::Retry { retry_after, last } => (retry_after, last),
            };
            if attempt == max {
                let err = CallError::Exhausted {
                    attempts: attempt,
                    last,
                };
                return (outcomes, Err(err));
            }
            let wait = retry_after.map_or_else(
                || {
                    self.retry
                        .backoff
                        .delay(i32::try_from(attempt).unwrap_or(i32::MAX))
                },
                |ra| ra.min(self.retry.max_retry_after),
            );
            tracing::warn!(attempt, wait_ms = wait.as_millis(), error = %last, "model call failed; retrying");
            tokio::select! {
                () = cancel.cancelled() => return (outcomes, Err(CallError::Cancelled)),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One HTTP attempt: recorded before it is sent, its outcome pushed to `outcomes`.
    async fn attempt(
        &self,
        body: &bytes::Bytes,
        cancel: &CancellationToken,
        log: &impl CallLog,
        outcomes: &mut Vec<CallOutcome>,
    ) -> Step {
        if cancel.is_cancelled() {
            return Step::Done(Err(CallError::Cancelled));
        }
        let call_id = uuid::Uuid::new_v4();
        // Boxed: the ledger write's future is not kept beside the HTTP call's.
        match Box::pin(log.before_send(call_id)).await {
            Ok(()) => {}
            Err(BeforeSend::RunEnded) => return Step::Done(Err(CallError::Cancelled)),
            Err(BeforeSend::Ledger(e)) => return Step::Done(Err(CallError::Ledger(e))),
        }
        let started = Instant::now();
        let sent = tokio::select! {
            () = cancel.cancelled() => {
                outcomes.push(outcome(call_id, "cancelled", started, None, None, Some("cancelled mid-request".into())));
                return Step::Done(Err(CallError::Cancelled));
            }
            r = self.send(call_id, body.clone()) => r,
        };
        let (step, recorded) = judge(call_id, started, sent);
        outcomes.push(recorded);
        step
    }

    async fn send(&self, call_id: uuid::Uuid, body: bytes::Bytes) -> Result<Sent, Failure> {
        let mut builder = self
            .http
            .post(&self.url)
            .timeout(self.timeout)
            .header("X-Phasefleet-Call", call_id.to_string())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(&key.0);
        }
        let resp = builder.send().await.map_err(|e| send_failure(&e))?;
        let code = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let request_id = header("x-request-id")
            .or_else(|| header("x-generation-id"))
            .and_then(|id| sanitize_request_id(&id));
        let retry_after = header("retry-after")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(86_400.0)));
        let body = read_capped(resp, self.max_response_bytes).await?;
        if !(200..300).contains(&code) {
            let excerpt = String::from_utf8_lossy(&body[..body.len().min(2000)])
                .escape_debug()
                .to_string();
            tracing::warn!(code, request_id = request_id.as_deref(), body = %excerpt, "provider answered with an error");
            return Ok(Sent::Status {
                code,
                described: describe_refusal(code, &body),
                retry_after,
                request_id,
            });
        }
        let response: ChatResponse = serde_json::from_slice(&body).map_err(|e| Failure {
            status: "decode_error",
            message: format!("the response is not a chat completion ({e})"),
        })?;
        let request_id =
            request_id.or_else(|| response.id.as_deref().and_then(sanitize_request_id));
        Ok(Sent::Ok {
            response: Box::new(response),
            request_id,
        })
    }
}

/// What one HTTP attempt means for the call.
enum Step {
    Done(Result<ChatResponse, CallError>),
    Retry {
        retry_after: Option<Duration>,
        last: String,
    },
}

enum Sent {
    Ok {
        response: Box<ChatResponse>,
        request_id: Option<String>,
    },
    Status {
        code: u16,
        described: String,
        retry_after: Option<Duration>,
        request_id: Option<String>,
    },
}

struct Failure {
    status: &'static str,
    message: String,
}

/// Read the body as a stream, refusing it once it passes `cap` bytes.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, Failure> {
    let too_large = || Failure {
        status: "too_large",
        message: format!(
            "the model's response is larger than {} MiB",
            cap.div_ceil(1024 * 1024)
        ),
    };
    if resp
        .content_length()
        .is_some_and(|n| n > u64::try_from(cap).unwrap_or(u64::MAX))
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > cap {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                let mut f = send_failure(&e);
                f.message = format!("reading the response: {}", f.message);
                return Err(f);
            }
        }
    }
}

/// A send error as a status and its root cause ("connection refused"), without the URL.
fn send_failure(e: &reqwest::Error) -> Failure {
    let status = if e.is_timeout() {
        "timeout"
    } else {
        "connect_error"
    };
    let mut root: Option<String> = None;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        root = Some(s.to_string());
        source = s.source();
    }
    let message = match (status, root) {
        ("timeout", _) => "the request timed out".to_owned(),
        (_, Some(cause)) => format!("connection failed: {}", cause.to_lowercase()),
        (_, None) => "connection failed".to_owned(),
    };
    Failure { status, message }
}

/// A fixed description of a refusal; the provider's words stay in the worker's log.
fn describe_refusal(code: u16, body: &[u8]) -> String {
    let head = String::from_utf8_lossy(&body[..body.len().min(64 * 1024)]).to_ascii_lowercase();
    let context = [
        "context_length",
        "context length",
        "maximum context",
        "context window",
        "too many tokens",
    ];
    if (code == 400 || code == 413) && context.iter().any(|c| head.contains(c)) {
        return "the request does not fit the model's context window".into();
    }
    // llama.cpp's server, when a reply hits max_tokens inside a tool call.
    if code >= 500 && head.contains("failed to parse tool call") {
        return "the provider could not parse the model's tool call (cut off at max_tokens?)"
            .into();
    }
    match code {
        400 => "the provider rejected the request as invalid",
        401 => "the provider refused the API key (check the provider's api_key_env)",
        402 => "the provider requires payment (credits exhausted?)",
        403 => "the provider forbids this request (model access, region or policy)",
        404 => "the provider does not know this model or endpoint",
        408 => "the provider timed out",
        413 => "the request is too large for the provider",
        422 => "the provider could not process the request",
        429 => "rate limited by the provider",
        500..=599 => "the provider failed",
        _ => "the provider refused the request",
    }
    .into()
}

/// A provider request id as safe text: visible ASCII, at most 128 characters.
fn sanitize_request_id(id: &str) -> Option<String> {
    let clean: String = id
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(128)
        .collect();
    (!clean.is_empty()).then_some(clean)
}

fn id_note(request_id: Option<&str>) -> String {
    request_id.map_or_else(String::new, |id| format!(" (provider request id {id})"))
}

/// What an HTTP attempt's answer means: done (a response, or a refusal not worth
/// retrying) or retry (429, 408, 5xx, a transport failure); and its ledger outcome.
fn judge(
    call_id: uuid::Uuid,
    started: Instant,
    sent: Result<Sent, Failure>,
) -> (Step, CallOutcome) {
    match sent {
        Ok(Sent::Ok {
            response,
            request_id,
        }) => {
            let usage = response.usage.clone();
            let recorded = outcome(call_id, "ok", started, request_id, usage, None);
            (Step::Done(Ok(*response)), recorded)
        }
        Ok(Sent::Status {
            code,
            described,
            retry_after,
            request_id,
        }) => {
            let msg = format!("HTTP {code}: {described}{}", id_note(request_id.as_deref()));
            let status = format!("http_{code}");
            let recorded = outcome(
                call_id,
                &status,
                started,
                request_id,
                None,
                Some(msg.clone()),
            );
            let step = if code == 429 || code == 408 || code >= 500 {
                Step::Retry {
                    retry_after,
                    last: msg,
                }
            } else {
                Step::Done(Err(CallError::Refused { code, message: msg }))
            };
            (step, recorded)
        }
        Err(Failure { status, message }) => {
            let recorded = outcome(call_id, status, started, None, None, Some(message.clone()));
            let step = if matches!(status, "decode_error" | "too_large") {
                Step::Done(Err(CallError::BadResponse(message)))
            } else {
                Step::Retry {
                    retry_after: None,
                    last: message,
                }
            };
            (step, recorded)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_never_echo_the_body() {
        let body = br#"{"error":{"message":"SECRET internal detail"}}"#;
        for code in [400, 401, 402, 403, 404, 418, 503] {
            assert!(!describe_refusal(code, body).contains("SECRET"));
        }
        assert!(
            describe_refusal(400, br#"{"error":{"code":"context_length_exceeded"}}"#)
                .contains("context window")
        );
        assert!(
            describe_refusal(
                500,
                br#"{"error":{"message":"Failed to parse tool call arguments as JSON"}}"#
            )
            .contains("max_tokens")
        );
        assert_eq!(
            sanitize_request_id("id-1\u{0}\n<x>"),
            Some("id-1<x>".into())
        );
        assert_eq!(sanitize_request_id("\u{7}"), None);
    }
}
