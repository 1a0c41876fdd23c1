//! Notifications to operator-configured webhooks: an approval requested, decided or
//! escalated, a run ended, a budget exhausted. Each goes through the queue in two
//! steps, so nothing is lost and no process waits:
//! 1. the engine transaction that appends the event enqueues a `notification` job
//!    ([`enqueue_notifications`], called by `LockedRun::flush_events`);
//! 2. a worker turns it into one `webhook_delivery` job per subscribed webhook
//!    ([`fan_out`]), in one transaction with the notification's completion;
//! 3. each delivery POSTs a JSON body signed with HMAC-SHA256 over `<timestamp>.<body>`
//!    ([`deliver`]); a failure is retried with the queue's backoff. Delivery is at
//!    least once: the `delivery_id` (the same on every attempt) lets a receiver drop a
//!    repeat. Every attempt is recorded (`webhook_deliveries`).

use crate::config::{Config, WebhookConfig};
use crate::ids::RunId;
use crate::queue::{self, ClaimedJob, Completed, NewJob, QueueError};
use crate::store::webhook_deliveries::{self, NewDeliveryAttempt};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The notifications a webhook may subscribe to.
pub const NOTIFICATIONS: &[&str] = &[
    "approval.requested",
    "approval.decided",
    "approval.escalated",
    "run.ended",
    "budget.exhausted",
];

/// The job that turns one event into deliveries.
pub const NOTIFICATION_JOB_KIND: &str = "notification";
/// The job that delivers one notification to one webhook.
pub const DELIVERY_JOB_KIND: &str = "webhook_delivery";

/// The header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "phasefleet-signature";
/// The header carrying the delivery id.
pub const DELIVERY_HEADER: &str = "phasefleet-delivery";
/// How long a receiver may take to answer.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The notification an event kind announces, if any.
#[must_use]
pub fn notification_of(kind: &str) -> Option<&'static str> {
    match kind {
        "approval.requested" => Some("approval.requested"),
        "approval.decided" => Some("approval.decided"),
        "approval.escalated" => Some("approval.escalated"),
        "run.completed" | "run.failed" | "run.aborted" | "run.cancelled" => Some("run.ended"),
        "run.awaiting_budget" => Some("budget.exhausted"),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook {webhook} answered HTTP {status}")]
    Rejected { webhook: String, status: u16 },
    #[error("webhook {webhook} could not be reached: {message}")]
    Unreachable { webhook: String, message: String },
    #[error("not a notification job: {0}")]
    BadJob(String),
    #[error("webhook secret: {0}")]
    Secret(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Whether this process announces notifications: only once [`set_announcing`] saw
/// webhooks in its configuration. The fleet's processes share one configuration, so a
/// fleet without webhooks enqueues no notification jobs.
static ANNOUNCING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Say whether this process's configuration has webhooks (the binaries call it with
/// their configuration at start).
pub fn set_announcing(config: &Config) {
    ANNOUNCING.store(
        !config.webhooks.is_empty(),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Enqueue a `notification` job for each appended event that announces one (called in
/// the transaction that appends them), unless this process has no webhooks.
///
/// # Errors
/// Queue errors.
pub async fn enqueue_notifications(
    conn: &mut PgConnection,
    queue: &str,
    run: RunId,
    appended: &[crate::store::events::Appended],
) -> Result<(), QueueError> {
    if !ANNOUNCING.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    for a in appended
        .iter()
        .filter(|a| notification_of(&a.kind).is_some())
    {
        let job = NewJob::new(
            NOTIFICATION_JOB_KIND,
            json!({ "run_id": run, "seq": a.seq }),
        )
        .queue(queue)
        .unique_key(format!("notification:{run}:{}", a.seq));
        queue::enqueue(conn, &job).await?;
    }
    Ok(())
}

/// The configured webhooks with their secrets, and the HTTP client that delivers.
#[derive(Clone, Default)]
pub struct Webhooks {
    hooks: BTreeMap<String, (WebhookConfig, Vec<u8>)>,
    http: Option<reqwest::Client>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("names", &self.hooks.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// The configuration's webhooks, each secret read from its variable now.
    ///
    /// # Errors
    /// [`WebhookError::Secret`] naming a webhook whose variable is unset or empty.
    pub fn from_config(config: &Config) -> Result<Self, WebhookError> {
        Self::from_config_with(config, |name| std::env::var(name).ok())
    }

    /// [`Webhooks::from_config`] with the secrets from `lookup` (variable name ->
    /// value) instead of the environment.
    ///
    /// # Errors
    /// As [`Webhooks::from_config`].
    pub fn from_config_with(
        config: &Config,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, WebhookError> {
        let mut hooks = BTreeMap::new();
        for (name, w) in &config.webhooks {
            let secret = lookup(&w.secret_env)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    WebhookError::Secret(format!("webhook {name}: {} is not set", w.secret_env))
                })?;
            hooks.insert(name.clone(), (w.clone(), secret.into_bytes()));
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| WebhookError::Secret(format!("HTTP client: {e}")))?;
        Ok(Self {
            hooks,
            http: Some(http),
        })
    }

    fn subscribed<'a>(
        &'a self,
        notification: &'a str,
        team: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a WebhookConfig)> {
        self.hooks
            .iter()
            .map(|(n, (w, _))| (n, w))
            .filter(move |(_, w)| {
                w.events
                    .as_ref()
                    .is_none_or(|e| e.iter().any(|x| x == notification))
                    && w.teams.as_ref().is_none_or(|t| t.iter().any(|x| x == team))
            })
    }
}

#[derive(Debug, Deserialize)]
struct NotificationJob {
    run_id: RunId,
    seq: i64,
}

/// A delivery job's payload: the body is made once, at fan-out, so every attempt of a
/// delivery sends the same bytes (signed anew).
#[derive(Debug, Serialize, Deserialize)]
struct DeliveryJob {
    webhook: String,
    delivery_id: String,
    notification: String,
    run_id: RunId,
    seq: i64,
    body: serde_json::Value,
}

/// The id a receiver deduplicates on: the same for one event and one webhook, however
/// often it is enqueued or attempted.
fn delivery_id(webhook: &str, run: RunId, seq: i64) -> String {
    let digest = Sha256::digest(format!("{webhook}:{run}:{seq}").as_bytes());
    hex::encode(&digest[..16])
}

/// Turn a `notification` job into one delivery job per subscribed webhook, completing
/// it under its lease in the same transaction. `None` when no webhook is subscribed:
/// nothing to write, the caller completes the job in its batch.
///
/// # Errors
/// [`WebhookError`].
pub async fn fan_out(
    pool: &PgPool,
    hooks: &Webhooks,
    job: &ClaimedJob,
) -> Result<Option<Completed>, WebhookError> {
    let n: NotificationJob = serde_json::from_value(job.payload.clone())
        .map_err(|e| WebhookError::BadJob(e.to_string()))?;
    // A process with webhooks enqueued it: a worker without any must not drop it.
    if hooks.hooks.is_empty() {
        return Err(WebhookError::Unreachable {
            webhook: "(any)".into(),
            message: "this worker's configuration has no webhooks; another worker's may".into(),
        });
    }
    let deliveries = {
        let mut conn = pool.acquire().await?;
        deliveries_of(&mut conn, hooks, &n).await?
    };
    if deliveries.is_empty() {
        return Ok(None);
    }
    let mut tx = pool.begin().await?;
    for (payload, max_attempts) in deliveries {
        let key = format!("webhook:{}:{}:{}", payload.webhook, n.run_id, n.seq);
        let delivery = NewJob::new(DELIVERY_JOB_KIND, json!(payload))
            .queue(&job.queue)
            .max_attempts(max_attempts)
            .unique_key(key);
        queue::enqueue(&mut tx, &delivery).await?;
    }
    let completed = queue::complete(&mut tx, &job.lease()).await?;
    tx.commit().await?;
    Ok(Some(completed))
}

/// The delivery jobs a notification makes, with their attempt budgets.
async fn deliveries_of(
    conn: &mut PgConnection,
    hooks: &Webhooks,
    n: &NotificationJob,
) -> Result<Vec<(DeliveryJob, i32)>, WebhookError> {
    let found = crate::store::events::events_get(conn, n.run_id, n.seq).await?;
    let run = crate::store::runs::runs_get(conn, n.run_id).await?;
    let (Some(event), Some(run)) = (found, run) else {
        return Ok(Vec::new());
    };
    let Some(notification) = notification_of(&event.kind) else {
        return Ok(Vec::new());
    };
    Ok(hooks
        .subscribed(notification, &run.team)
        .map(|(name, w)| {
            let id = delivery_id(name, n.run_id, n.seq);
            let payload = DeliveryJob {
                webhook: name.clone(),
                body: body_of(&id, notification, &run, &event),
                delivery_id: id,
                notification: notification.to_owned(),
                run_id: n.run_id,
                seq: n.seq,
            };
            (payload, w.max_attempts.unwrap_or(8))
        })
        .collect())
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
#[must_use]
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Deliver one `webhook_delivery` job's notification and record the attempt. No
/// database connection is held while the receiver answers.
///
/// # Errors
/// [`WebhookError::Rejected`] / [`WebhookError::Unreachable`] (the queue retries; also
/// for a webhook this worker has no configuration for, which another worker may);
/// database errors.
pub async fn deliver(
    pool: &PgPool,
    hooks: &Webhooks,
    job: &ClaimedJob,
) -> Result<(), WebhookError> {
    let d: DeliveryJob = serde_json::from_value(job.payload.clone())
        .map_err(|e| WebhookError::BadJob(e.to_string()))?;
    let body = serde_json::to_vec(&d.body).unwrap_or_default();
    let started = Instant::now();
    let outcome = match (hooks.hooks.get(&d.webhook), &hooks.http) {
        (Some((w, secret)), Some(http)) => post(http, w, secret, &d, &body).await,
        _ => Err((
            None,
            "this worker has no configuration for the webhook".to_owned(),
        )),
    };
    let (status, error) = match &outcome {
        Ok(status) => (Some(*status), None),
        Err((status, message)) => (*status, Some(message.as_str())),
    };
    let attempt = NewDeliveryAttempt {
        delivery_id: &d.delivery_id,
        webhook: &d.webhook,
        notification: &d.notification,
        run_id: d.run_id,
        event_seq: d.seq,
        attempt: job.attempts,
        status_code: status.map(i32::from),
        ok: outcome.is_ok(),
        error,
        duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
    };
    let mut conn = pool.acquire().await?;
    webhook_deliveries::webhook_deliveries_insert(&mut conn, &attempt).await?;
    match outcome {
        Ok(_) => Ok(()),
        Err((Some(status), _)) => Err(WebhookError::Rejected {
            webhook: d.webhook,
            status,
        }),
        Err((None, message)) => Err(WebhookError::Unreachable {
            webhook: d.webhook,
            message,
        }),
    }
}

/// The JSON a webhook receives.
fn body_of(
    delivery_id: &str,
    notification: &str,
    run: &crate::store::runs::RunRow,
    event: &crate::events::Event,
) -> serde_json::Value {
    json!({
        "delivery_id": delivery_id,
        "notification": notification,
        "run": { "id": run.id, "team": run.team, "state": run.state.as_str(),
                 "template_hash": run.template_hash, "error": run.error },
        "event": { "seq": event.seq, "kind": event.kind, "phase": event.phase_key,
                   "data": event.data, "at": event.created_at },
    })
}

/// POST `body` signed; the receiver's status on a 2xx, else what went wrong.
async fn post(
    http: &reqwest::Client,
    w: &WebhookConfig,
    secret: &[u8],
    d: &DeliveryJob,
    body: &[u8],
) -> Result<u16, (Option<u16>, String)> {
    let timestamp = chrono::Utc::now().timestamp();
    let sent = http
        .post(&w.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature(secret, timestamp, body))
        .header(DELIVERY_HEADER, &d.delivery_id)
        .header("phasefleet-notification", &d.notification)
        .body(body.to_vec())
        .send()
        .await;
    match sent {
        Ok(resp) if resp.status().is_success() => Ok(resp.status().as_u16()),
        Ok(resp) => {
            let status = resp.status().as_u16();
            Err((Some(status), format!("HTTP {status}")))
        }
        // The error names the URL the operator configured; never a body.
        Err(e) => Err((None, e.without_url().to_string())),
    }
}
