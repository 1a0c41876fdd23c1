//! Wake-ups for live event streams. Events themselves are always read from
//! PostgreSQL; the bus only says "run X has something new", so a lost wake-up costs
//! latency (streams also poll), never an event.
//!
//! Without Redis each API instance LISTENs on PostgreSQL. With `REDIS_URL`, one API
//! instance in the fleet (the holder of a PostgreSQL advisory lock) relays NOTIFY to a
//! Redis channel and every instance subscribes to it, so N replicas cost one LISTEN
//! connection instead of N. If Redis is unreachable, an instance falls back to its own
//! LISTEN until Redis answers again.

use phasefleet::RunId;
use phasefleet::events::EVENTS_CHANNEL;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

/// The Redis pub/sub channel the relay publishes to.
pub const REDIS_CHANNEL: &str = "phasefleet:events";
const RELAY_LOCK: i64 = 0x7068_6173_6566_6c74; // "phaseflt"

#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<RunId>,
    redis: bool,
    redis_live: Arc<AtomicBool>,
}

impl EventBus {
    /// Start the bus tasks; they stop when `shutdown` fires.
    #[must_use]
    pub fn start(pool: PgPool, redis_url: Option<String>, shutdown: CancellationToken) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let bus = Self {
            tx,
            redis: redis_url.is_some(),
            redis_live: Arc::new(AtomicBool::new(false)),
        };
        match redis_url {
            None => {
                tokio::spawn(listen_pg(pool, bus.tx.clone(), None, shutdown));
            }
            Some(url) => {
                tokio::spawn(relay(pool.clone(), url.clone(), shutdown.clone()));
                tokio::spawn(subscribe_redis(pool, url, bus.clone(), shutdown));
            }
        }
        bus
    }

    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<RunId> {
        self.tx.subscribe()
    }

    /// Redis as this replica sees it: `ok`, `unreachable` (live events then come
    /// through its own LISTEN) or `off` (not configured).
    #[must_use]
    pub fn redis_state(&self) -> &'static str {
        match (self.redis, self.redis_live.load(Ordering::Relaxed)) {
            (false, _) => "off",
            (true, true) => "ok",
            (true, false) => "unreachable",
        }
    }

    /// "redis" when wake-ups currently arrive through Redis, else "postgres".
    #[must_use]
    pub fn kind(&self) -> &'static str {
        if self.redis && self.redis_live.load(Ordering::Relaxed) {
            "redis"
        } else {
            "postgres"
        }
    }
}

fn parse(payload: &str) -> Option<RunId> {
    payload
        .split_once(':')
        .and_then(|(run, _)| run.parse().ok())
}

/// LISTEN on PostgreSQL and forward each notification to `tx` and, for the relay, to
/// Redis. Reconnects with backoff; returns when `stop` fires.
async fn listen_pg(
    pool: PgPool,
    tx: broadcast::Sender<RunId>,
    mut redis: Option<redis::aio::MultiplexedConnection>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    while !stop.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "event bus: cannot LISTEN; retrying");
                tokio::select! { () = stop.cancelled() => return, () = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = listener.listen(EVENTS_CHANNEL).await {
            tracing::warn!(error = %e, "event bus: LISTEN failed; retrying");
            continue;
        }
        backoff = Duration::from_millis(200);
        loop {
            let n = tokio::select! {
                () = stop.cancelled() => return,
                n = listener.recv() => n,
            };
            match n {
                Ok(n) => {
                    if let Some(run) = parse(n.payload()) {
                        let _ = tx.send(run);
                    }
                    if let Some(conn) = redis.as_mut() {
                        let mut cmd = redis::cmd("PUBLISH");
                        cmd.arg(REDIS_CHANNEL).arg(n.payload());
                        let published = bounded(
                            "Redis did not answer PUBLISH in time",
                            cmd.query_async::<i64>(conn),
                        )
                        .await;
                        if let Err(e) = published {
                            tracing::warn!(error = %e, "event relay: Redis publish failed; giving up the relay");
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event bus: connection lost; reconnecting");
                    break;
                }
            }
        }
    }
}

/// One instance in the fleet relays PostgreSQL NOTIFY to Redis: whoever holds the
/// advisory lock. The others retry every two seconds, so a dead relay is replaced.
/// Only an instance that reaches Redis competes for the lock (one cut off from Redis
/// must not keep winning it while the others could relay); its connection is kept
/// between tries.
async fn relay(pool: PgPool, url: String, stop: CancellationToken) {
    let mut redis: Option<redis::aio::MultiplexedConnection> = None;
    while !stop.is_cancelled() {
        if redis.is_none() {
            redis = match redis_connect(&url).await {
                Ok(conn) => Some(conn),
                Err(e) => {
                    tracing::debug!(error = %e, "event relay: Redis not reachable");
                    None
                }
            };
        }
        if let Some(conn) = redis.clone() {
            match relay_once(&pool, conn, &stop).await {
                // It relayed until PUBLISH failed (or shutdown): connect afresh.
                Ok(true) => redis = None,
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "event relay: not relaying now"),
            }
        }
        tokio::select! { () = stop.cancelled() => return, () = tokio::time::sleep(Duration::from_secs(2)) => {} }
    }
}

async fn redis_connect(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    bounded(
        "Redis did not answer in time",
        client.get_multiplexed_async_connection(),
    )
    .await
}

/// Relay while this instance holds the lock; whether it did.
async fn relay_once(
    pool: &PgPool,
    conn: redis::aio::MultiplexedConnection,
    stop: &CancellationToken,
) -> Result<bool, sqlx::Error> {
    let mut lock_conn = pool.acquire().await?;
    if !phasefleet::db::try_advisory_lock(&mut lock_conn, RELAY_LOCK).await? {
        return Ok(false);
    }
    tracing::info!("event relay: this instance relays PostgreSQL NOTIFY to Redis");
    // The broadcast side is unused here: the relay only publishes.
    let (tx, _) = broadcast::channel(1);
    listen_pg(pool.clone(), tx, Some(conn), stop.clone()).await;
    // Release explicitly; a dropped connection would keep the lock while pooled.
    let _ = phasefleet::db::advisory_unlock(&mut lock_conn, RELAY_LOCK).await;
    Ok(true)
}

/// Subscribe to the Redis channel; while Redis is down, LISTEN on PostgreSQL instead.
async fn subscribe_redis(pool: PgPool, url: String, bus: EventBus, stop: CancellationToken) {
    while !stop.is_cancelled() {
        match redis_stream(&url, &bus, &stop).await {
            Ok(()) => return,
            Err(e) => {
                bus.redis_live.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "event bus: Redis unavailable; using PostgreSQL LISTEN until it is back");
                let fallback = stop.child_token();
                let task = tokio::spawn(listen_pg(
                    pool.clone(),
                    bus.tx.clone(),
                    None,
                    fallback.clone(),
                ));
                tokio::select! { () = stop.cancelled() => {}, () = tokio::time::sleep(Duration::from_secs(2)) => {} }
                // Keep the fallback until Redis answers again.
                while !stop.is_cancelled() && redis_ping(&url).await.is_err() {
                    tokio::select! { () = stop.cancelled() => {}, () = tokio::time::sleep(Duration::from_secs(2)) => {} }
                }
                fallback.cancel();
                let _ = task.await;
            }
        }
    }
}

/// How long a Redis command may take before Redis counts as unreachable: a cut link
/// drops packets silently, so without a bound a command waits for TCP to give up.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// `command`, failing as an I/O error saying `what` did not answer within
/// [`REDIS_TIMEOUT`].
async fn bounded<T>(
    what: &'static str,
    command: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(REDIS_TIMEOUT, command)
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, what)))?
}

async fn redis_ping(url: &str) -> redis::RedisResult<()> {
    let mut conn = redis_connect(url).await?;
    let ping = redis::cmd("PING");
    bounded(
        "Redis did not answer PING in time",
        ping.query_async::<String>(&mut conn),
    )
    .await
    .map(|_| ())
}

async fn redis_stream(
    url: &str,
    bus: &EventBus,
    stop: &CancellationToken,
) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let pubsub = bounded("Redis did not answer SUBSCRIBE in time", async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(REDIS_CHANNEL).await?;
        Ok(pubsub)
    })
    .await?;
    bus.redis_live.store(true, Ordering::Relaxed);
    let (mut sink, mut messages) = pubsub.split();
    // A quiet subscription cannot tell a partition from silence: PING over the
    // subscription's own connection every two seconds and fall back when it does not
    // answer in time.
    let mut health = tokio::time::interval(Duration::from_secs(2));
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = health.tick() => {
                bounded("Redis did not answer PING in time", sink.ping::<redis::Value>()).await?;
                continue;
            }
            m = messages.next() => m,
        };
        let Some(msg) = msg else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "subscription closed",
            )));
        };
        if let Ok(payload) = msg.get_payload::<String>()
            && let Some(run) = parse(&payload)
        {
            let _ = bus.tx.send(run);
        }
    }
}
