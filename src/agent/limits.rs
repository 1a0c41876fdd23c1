//! Per-model limits on LLM calls: requests per minute, tokens per minute, concurrent
//! calls. Fleet-wide through Redis when `REDIS_URL` is set; per process otherwise, and
//! per process again whenever Redis fails (a Redis outage degrades, never blocks).
//!
//! Configure with `PHASEFLEET_MODEL_LIMITS`, JSON keyed by model (`*` for the rest):
//! `{"openai/gpt-4o-mini": {"rpm": 60, "tpm": 200000, "concurrent": 8}}`.

use super::AgentError;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelLimits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrent: Option<u32>,
}

/// Hands out permission to call a model.
#[derive(Clone)]
pub struct Limiter {
    config: Arc<HashMap<String, ModelLimits>>,
    redis: Option<redis::aio::ConnectionManager>,
    local: Arc<Mutex<HashMap<String, Local>>>,
    /// How long a fleet-wide concurrency slot lives if its holder dies without
    /// releasing it (a killed worker): the call timeout plus a margin.
    slot_ttl_secs: u64,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new(HashMap::new(), None)
    }
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("config", &self.config)
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

struct Local {
    semaphore: Option<Arc<Semaphore>>,
    minute: u64,
    requests: u64,
    tokens: u64,
}

/// Held for the duration of one call.
pub struct Permit {
    _local: Option<OwnedSemaphorePermit>,
    redis: Option<(redis::aio::ConnectionManager, String, String)>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some((mut conn, key, member)) = self.redis.take() {
            // Release in the background; the member's expiry covers a failure here.
            tokio::spawn(async move {
                let _: Result<i64, _> = redis::cmd("ZREM")
                    .arg(&key)
                    .arg(&member)
                    .query_async(&mut conn)
                    .await;
            });
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

const ACQUIRE_SLOT: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  redis.call('EXPIRE', KEYS[1], 600)
  return 1
end
return 0";

const TAKE_WINDOW: &str = r"
local r = redis.call('INCRBY', KEYS[1], 1)
local t = redis.call('INCRBY', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], 120)
redis.call('EXPIRE', KEYS[2], 120)
if (tonumber(ARGV[2]) > 0 and r > tonumber(ARGV[2])) or (tonumber(ARGV[3]) > 0 and t > tonumber(ARGV[3])) then
  redis.call('DECRBY', KEYS[1], 1)
  redis.call('DECRBY', KEYS[2], ARGV[1])
  return 0
end
return 1";

impl Limiter {
    /// Limits from `PHASEFLEET_MODEL_LIMITS` and, when `REDIS_URL` is set and reachable,
    /// fleet-wide through Redis.
    ///
    /// # Errors
    /// A message when `PHASEFLEET_MODEL_LIMITS` does not parse.
    pub async fn from_env() -> Result<Self, String> {
        let config: HashMap<String, ModelLimits> = match std::env::var("PHASEFLEET_MODEL_LIMITS") {
            Ok(s) if !s.trim().is_empty() => {
                serde_json::from_str(&s).map_err(|e| format!("PHASEFLEET_MODEL_LIMITS: {e}"))?
            }
            _ => HashMap::new(),
        };
        let redis = match std::env::var("REDIS_URL") {
            Ok(url) if !url.is_empty() => connect(&url).await,
            _ => None,
        };
        let call_timeout = std::env::var("PHASEFLEET_LLM_CALL_TIMEOUT_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(300);
        let mut limiter = Self::new(config, redis);
        limiter.slot_ttl_secs = call_timeout + 30;
        Ok(limiter)
    }

    #[must_use]
    pub fn new(
        config: HashMap<String, ModelLimits>,
        redis: Option<redis::aio::ConnectionManager>,
    ) -> Self {
        Self {
            config: Arc::new(config),
            redis,
            local: Arc::default(),
            slot_ttl_secs: 330,
        }
    }

    fn limits(&self, model: &str) -> ModelLimits {
        self.config
            .get(model)
            .or_else(|| self.config.get("*"))
            .copied()
            .unwrap_or_default()
    }

    /// Wait for permission to call `model` with about `tokens` tokens.
    ///
    /// # Errors
    /// [`AgentError::Cancelled`] when `cancel` fires while waiting.
    pub async fn acquire(
        &self,
        model: &str,
        tokens: u64,
        cancel: &CancellationToken,
    ) -> Result<Permit, AgentError> {
        let limits = self.limits(model);
        if limits == ModelLimits::default() {
            return Ok(Permit {
                _local: None,
                redis: None,
            });
        }
        loop {
            let got = match &self.redis {
                Some(conn) => match self.try_redis(conn.clone(), model, tokens, limits).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "redis limiter unavailable; limiting per process");
                        self.try_local(model, tokens, limits)
                    }
                },
                None => self.try_local(model, tokens, limits),
            };
            if let Some(p) = got {
                return Ok(p);
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(AgentError::Cancelled),
                () = tokio::time::sleep(Duration::from_millis(100 + fastrand::u64(0..100))) => {}
            }
        }
    }

    fn try_local(&self, model: &str, tokens: u64, l: ModelLimits) -> Option<Permit> {
        let mut map = self
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let minute = now_secs() / 60;
        let st = map.entry(model.to_owned()).or_insert_with(|| Local {
            semaphore: l.concurrent.map(|n| Arc::new(Semaphore::new(n as usize))),
            minute,
            requests: 0,
            tokens: 0,
        });
        if st.minute != minute {
            (st.minute, st.requests, st.tokens) = (minute, 0, 0);
        }
        if l.rpm.is_some_and(|r| st.requests >= r)
            || l.tpm
                .is_some_and(|t| st.tokens + tokens > t && st.tokens > 0)
        {
            return None;
        }
        let permit = match &st.semaphore {
            Some(s) => Some(s.clone().try_acquire_owned().ok()?),
            None => None,
        };
        st.requests += 1;
        st.tokens += tokens;
        Some(Permit {
            _local: permit,
            redis: None,
        })
    }

    async fn try_redis(
        &self,
        mut conn: redis::aio::ConnectionManager,
        model: &str,
        tokens: u64,
        l: ModelLimits,
    ) -> Result<Option<Permit>, redis::RedisError> {
        let minute = now_secs() / 60;
        let ok: i64 = redis::Script::new(TAKE_WINDOW)
            .key(format!("pf:rpm:{model}:{minute}"))
            .key(format!("pf:tpm:{model}:{minute}"))
            .arg(tokens)
            .arg(l.rpm.unwrap_or(0))
            .arg(l.tpm.unwrap_or(0))
            .invoke_async(&mut conn)
            .await?;
        if ok == 0 {
            return Ok(None);
        }
        let Some(max) = l.concurrent else {
            return Ok(Some(Permit {
                _local: None,
                redis: None,
            }));
        };
        let key = format!("pf:conc:{model}");
        let member = uuid::Uuid::new_v4().to_string();
        let now = now_secs();
        // A slot expires after the call timeout (plus a margin), so a killed worker's
        // slots come back.
        let got: i64 = redis::Script::new(ACQUIRE_SLOT)
            .key(&key)
            .arg(now)
            .arg(now + self.slot_ttl_secs)
            .arg(max)
            .arg(&member)
            .invoke_async(&mut conn)
            .await?;
        Ok((got == 1).then(|| Permit {
            _local: None,
            redis: Some((conn, key, member)),
        }))
    }
}

async fn connect(url: &str) -> Option<redis::aio::ConnectionManager> {
    let client = match redis::Client::open(url) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "REDIS_URL is not usable; limiting per process");
            return None;
        }
    };
    match tokio::time::timeout(
        Duration::from_secs(3),
        redis::aio::ConnectionManager::new(client),
    )
    .await
    {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "redis unreachable; limiting per process");
            None
        }
        Err(_) => {
            tracing::warn!("redis connect timed out; limiting per process");
            None
        }
    }
}
