//! Batched completion. A handler whose completion does not have to share a transaction
//! with its effects hands its lease to the completer, which writes many completions in
//! one statement, each still fenced by its own lease token. Group commit: whatever
//! queued while one flush ran goes into the next, up to `max_batch`, after waiting
//! `delay` for more (zero by default: batching then costs no latency).

use phasefleet::queue::{self, Completed, Lease, QueueError};
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How long one batch statement may take before its handlers complete on their own
/// (a connection that went silent must not hold every batched job of the worker).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What a flush tells one waiting handler.
enum Answer {
    /// Completed, or refused because the lease was lost.
    Done(Result<Completed, QueueError>),
    /// The batch statement failed or took too long: complete on your own, so the error
    /// the handler sees is its job's.
    BatchFailed,
}

struct Request {
    lease: Lease,
    reply: oneshot::Sender<Answer>,
}

/// Completes jobs in batches through a flush task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Completer {
    requests: mpsc::Sender<Request>,
    pool: PgPool,
}

impl Completer {
    /// A completer and the task that flushes for it; run the task
    /// (with [`FlushTask::run`]) for as long as jobs may complete. Until it runs, and
    /// after it ended, completions are written one by one.
    #[must_use]
    pub fn new(pool: PgPool, max_batch: usize, delay: Duration) -> (Self, FlushTask) {
        let max_batch = max_batch.max(1);
        let (requests, receiver) = mpsc::channel(max_batch.saturating_mul(4));
        let task = FlushTask {
            pool: pool.clone(),
            receiver,
            max_batch,
            delay,
        };
        let completer = Self { requests, pool };
        (completer, task)
    }

    /// Complete the job of `lease` in the next batch. Not cancel-safe: once queued,
    /// the completion is written even if this future is dropped.
    ///
    /// # Errors
    /// [`QueueError::LeaseLost`] when another worker owns the job now; database errors
    /// when neither the batch nor a direct completion could be written.
    pub async fn complete(&self, lease: Lease) -> Result<Completed, QueueError> {
        let (reply, answer) = oneshot::channel();
        if self.requests.send(Request { lease, reply }).await.is_ok()
            && let Ok(Answer::Done(result)) = answer.await
        {
            return result;
        }
        Box::pin(self.complete_directly(lease)).await
    }

    async fn complete_directly(&self, lease: Lease) -> Result<Completed, QueueError> {
        let mut conn = self.pool.acquire().await?;
        queue::complete(&mut conn, &lease).await
    }
}

/// The completer's side that writes batches.
#[derive(Debug)]
pub struct FlushTask {
    pool: PgPool,
    receiver: mpsc::Receiver<Request>,
    max_batch: usize,
    delay: Duration,
}

impl FlushTask {
    /// Flush batches until `stop` fires, then flush what is queued and end (later
    /// completions are written directly by their handlers). Returns how many batch
    /// statements it wrote.
    pub async fn run(mut self, stop: CancellationToken) -> u64 {
        let mut batch = Vec::with_capacity(self.max_batch);
        let mut flushes = 0;
        loop {
            let received = tokio::select! {
                n = self.receiver.recv_many(&mut batch, self.max_batch) => n,
                () = stop.cancelled() => {
                    self.receiver.close();
                    while self.receiver.recv_many(&mut batch, self.max_batch).await > 0 {
                        flush(&self.pool, &mut batch).await;
                        flushes += 1;
                    }
                    return flushes;
                }
            };
            if received == 0 {
                return flushes;
            }
            self.wait_for_more(&mut batch).await;
            flush(&self.pool, &mut batch).await;
            flushes += 1;
        }
    }

    /// With a delay configured, give a batch that is not full that long to fill.
    async fn wait_for_more(&mut self, batch: &mut Vec<Request>) {
        if self.delay.is_zero() || batch.len() >= self.max_batch {
            return;
        }
        tokio::time::sleep(self.delay).await;
        while batch.len() < self.max_batch
            && let Ok(more) = self.receiver.try_recv()
        {
            batch.push(more);
        }
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("lease", &self.lease)
            .finish()
    }
}

/// Write one batch and answer every handler waiting on it.
async fn flush(pool: &PgPool, batch: &mut Vec<Request>) {
    // One lock order for every batch.
    batch.sort_unstable_by_key(|r| r.lease.job_id);
    let leases: Vec<Lease> = batch.iter().map(|r| r.lease).collect();
    let completed = tokio::time::timeout(FLUSH_TIMEOUT, async {
        let mut conn = pool.acquire().await?;
        queue::complete_many(&mut conn, &leases).await
    })
    .await;
    metrics::counter!("phasefleet_completion_batches_total").increment(1);
    let completed = match completed {
        Ok(Ok(done)) => Some(done),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, jobs = leases.len(), "batched completion failed; each job completes on its own");
            None
        }
        Err(_) => {
            tracing::warn!(
                jobs = leases.len(),
                timeout_s = FLUSH_TIMEOUT.as_secs(),
                "batched completion timed out; each job completes on its own"
            );
            None
        }
    };
    for request in batch.drain(..) {
        let answer = match &completed {
            Some(done) => Answer::Done(done.proof(&request.lease)),
            None => Answer::BatchFailed,
        };
        // A handler that stopped waiting (its task was aborted) needs no answer.
        let _ = request.reply.send(answer);
    }
}
