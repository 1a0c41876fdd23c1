//! Step 4's transactions, shared: the attempts that a worker process records at the
//! same moment share one transaction (one `BEGIN`, one `COMMIT`, one wait for the WAL
//! flush), each recorded by [`record::record_in`] as it would be alone. A worker with
//! an idle recorder records each attempt in its own transaction, as soon as it comes;
//! only attempts that queue while every recorder is busy are grouped, so grouping adds
//! no wait.
//!
//! - Locks: a group records its runs in the order of their ids, so two groups that
//!   share two runs lock them in the same order. Other rows two groups may share (the
//!   file blobs two attempts wrote, kept by content) can still close a cycle, which
//!   PostgreSQL breaks after `deadlock_timeout`; a member that waits on a lock for
//!   more than 2 s ([`GROUP_LOCK_TIMEOUT_SECONDS`]: a run row an approval holds) fails the
//!   group the same way. Either is then a failure of one attempt, below.
//! - Failure: when one attempt of a group fails, the group rolls back (nothing of it
//!   was written) and each of its attempts is recorded again alone, the runs at once,
//!   so one attempt's lost lease, stale delivery or held run costs the others nothing
//!   but time. A failed `COMMIT` is answered to each attempt as it would be alone: it
//!   may have committed, so nothing is recorded again.
//! - A phase that stopped waiting for its answer before its turn (its task was
//!   dropped) is not recorded; the lease expires and the job is delivered again.
//! - A group is recorded in a task of its own: a panic ends that task, its phases hear
//!   that recording failed and deliver again, and the recorder goes on.

use super::PhaseError;
use super::definitions::Definitions;
use super::record::{self, Recorded, ToRecord};
use crate::events::StreamWakeUps;
use sqlx::PgPool;
use std::sync::{Arc, OnceLock};
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::Instrument;

/// At most this many attempts share a transaction.
const MOST_PER_TRANSACTION: usize = 16;
/// A shared transaction waits at most 2 s for a lock; then its attempts are recorded
/// alone instead. The group's other attempts hold their rows meanwhile, and their
/// leases are not renewed while a renewal finds their rows held.
const GROUP_LOCK_TIMEOUT_SECONDS: u32 = 2;
/// Transactions that record at the same time, per worker process, unless the engine
/// says otherwise (`Engine::with_recorders`).
pub(super) const RECORDERS: usize = 4;

/// Records attempts for every phase of a worker process. Cheap to clone.
#[derive(Clone)]
pub(super) struct Recorder {
    inner: Arc<RecorderInner>,
}

/// What recording needs, shared by the recorders and their groups' tasks (not the
/// queue's sender: the recorders end when the last one is dropped).
#[derive(Clone)]
pub(super) struct Context {
    pub pool: PgPool,
    pub definitions: Definitions,
    pub wake_ups: StreamWakeUps,
}

struct RecorderInner {
    context: Context,
    /// How many transactions record at the same time.
    recorders: usize,
    /// Started with the first attempt to record; the recorders end when it is dropped.
    queue: OnceLock<mpsc::Sender<Request>>,
}

/// An attempt to record and where its answer goes.
struct Request {
    attempt: ToRecord,
    /// The phase's span: what is recorded for it is logged under it.
    span: tracing::Span,
    answer: oneshot::Sender<Result<Recorded, PhaseError>>,
}

impl Recorder {
    pub(super) fn new(context: Context, recorders: usize) -> Self {
        Self {
            inner: Arc::new(RecorderInner {
                context,
                recorders: recorders.max(1),
                queue: OnceLock::new(),
            }),
        }
    }

    /// What it records with.
    pub(super) fn context(&self) -> &Context {
        &self.inner.context
    }

    /// Record `attempt` (see [`record::record_in`]) and commit; live streams hear of its
    /// events after the commit.
    ///
    /// # Errors
    /// [`PhaseError`]; a lost lease is [`PhaseError::Queue`] and nothing is written.
    pub(super) async fn record(&self, attempt: ToRecord) -> Result<Recorded, PhaseError> {
        let (answer, answered) = oneshot::channel();
        let request = Request {
            attempt,
            span: tracing::Span::current(),
            answer,
        };
        let queue = self.inner.queue.get_or_init(|| self.start_recorders());
        queue
            .send(request)
            .await
            .map_err(|_| PhaseError::Retry("the worker's recorders stopped".into()))?;
        answered.await.map_err(|_| {
            PhaseError::Retry("recording ended without an answer (see the worker's log)".into())
        })?
    }

    fn start_recorders(&self) -> mpsc::Sender<Request> {
        let (queue, requests) = mpsc::channel(1024);
        let requests = Arc::new(Mutex::new(requests));
        for _ in 0..self.inner.recorders {
            tokio::spawn(record_as_they_come(
                self.inner.context.clone(),
                requests.clone(),
            ));
        }
        queue
    }
}

/// One recorder: take what is queued (at most [`MOST_PER_TRANSACTION`]) and record it
/// in one transaction, until the queue closes.
async fn record_as_they_come(context: Context, requests: Arc<Mutex<mpsc::Receiver<Request>>>) {
    loop {
        let group = {
            let mut requests = requests.lock().await;
            let Some(first) = requests.recv().await else {
                return;
            };
            let mut group = vec![first];
            while group.len() < MOST_PER_TRANSACTION
                && let Ok(next) = requests.try_recv()
            {
                group.push(next);
            }
            group
        };
        // Its own task: a panic in one group ends that task (its phases hear that the
        // recording failed, and retry), not this recorder.
        let recorded = tokio::spawn(record_group(context.clone(), group));
        if let Err(e) = recorded.await {
            tracing::error!(error = %e, "recording a group of attempts failed; they are delivered again");
        }
    }
}

/// Record a group in one transaction, or each of it alone when one attempt fails.
async fn record_group(context: Context, mut group: Vec<Request>) {
    let Context {
        pool,
        definitions,
        wake_ups,
    } = &context;
    group.retain(|r| !r.answer.is_closed());
    if group.is_empty() {
        return;
    }
    group.sort_by_key(|r| r.attempt.p.run_id);
    metrics::counter!("phasefleet_record_groups_total").increment(1);
    metrics::counter!("phasefleet_recorded_attempts_total").increment(group.len() as u64);
    if group.len() > 1 {
        match together(pool, definitions, &group).await {
            Together::Committed(recorded) => {
                for (request, recorded) in group.into_iter().zip(recorded) {
                    answer(wake_ups, request, Ok(recorded));
                }
                return;
            }
            Together::NotCommitted(e) => {
                tracing::warn!(error = %e, attempts = group.len(), "a shared record transaction failed to begin or commit");
                for request in group {
                    let error = PhaseError::Retry(format!("recording failed: {e}"));
                    answer(wake_ups, request, Err(error));
                }
                return;
            }
            Together::RolledBack => {}
        }
    }
    record_each_alone(&context, group).await;
}

/// Record each attempt in its own transaction: the attempts of different runs at once,
/// so that one whose run another transaction holds keeps the others waiting no longer
/// (each phase hears its answer as soon as its own commit ends); those of one run (a
/// fan-out's items) one after another, since they would wait on the same row, each on
/// a connection of its own.
/// A group of one run (an idle recorder's single attempt, most often) is recorded in
/// this task.
async fn record_each_alone(context: &Context, group: Vec<Request>) {
    let mut runs = by_run(group);
    if runs.len() == 1
        && let Some(same_run) = runs.pop()
    {
        record_run_alone(context, same_run).await;
        return;
    }
    let mut each = tokio::task::JoinSet::new();
    for same_run in runs {
        let context = context.clone();
        each.spawn(async move { record_run_alone(&context, same_run).await });
    }
    while let Some(done) = each.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "recording attempts alone failed; they are delivered again");
        }
    }
}

/// Record the attempts of one run, each in its own transaction, one after another.
async fn record_run_alone(context: &Context, same_run: Vec<Request>) {
    for request in same_run {
        let recorded = alone(&context.pool, &context.definitions, &request.attempt)
            .instrument(request.span.clone())
            .await;
        answer(&context.wake_ups, request, recorded);
    }
}

/// The group (sorted by run id) split into the attempts of each run.
fn by_run(group: Vec<Request>) -> Vec<Vec<Request>> {
    let mut runs: Vec<Vec<Request>> = Vec::new();
    for request in group {
        match runs.last_mut() {
            Some(same)
                if same
                    .first()
                    .is_some_and(|r| r.attempt.p.run_id == request.attempt.p.run_id) =>
            {
                same.push(request);
            }
            _ => runs.push(vec![request]),
        }
    }
    runs
}

enum Together {
    /// What became of each attempt's job, with the last seq of its events.
    Committed(Vec<(Recorded, Option<i64>)>),
    /// The transaction did not begin, or its commit failed (it may have committed all
    /// or nothing).
    NotCommitted(sqlx::Error),
    /// An attempt failed; nothing was written.
    RolledBack,
}

async fn together(pool: &PgPool, definitions: &Definitions, group: &[Request]) -> Together {
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(e) => return Together::NotCommitted(e),
    };
    if let Err(e) = crate::db::set_local_lock_timeout(&mut tx, GROUP_LOCK_TIMEOUT_SECONDS).await {
        return Together::NotCommitted(e);
    }
    let mut recorded = Vec::with_capacity(group.len());
    for request in group {
        let one = record::record_in(&mut tx, definitions, &request.attempt)
            .instrument(request.span.clone())
            .await;
        match one {
            Ok(one) => recorded.push(one),
            Err(e) => {
                tracing::info!(parent: &request.span, error = %e, attempts = group.len(), "a shared record transaction rolls back; its attempts are recorded alone");
                let _ = tx.rollback().await;
                return Together::RolledBack;
            }
        }
    }
    match tx.commit().await {
        Ok(()) => Together::Committed(recorded),
        Err(e) => Together::NotCommitted(e),
    }
}

async fn alone(
    pool: &PgPool,
    definitions: &Definitions,
    attempt: &ToRecord,
) -> Result<(Recorded, Option<i64>), PhaseError> {
    let mut tx = pool.begin().await?;
    let recorded = record::record_in(&mut tx, definitions, attempt).await?;
    tx.commit().await?;
    Ok(recorded)
}

/// Wake live streams of a committed attempt's events and answer its phase.
fn answer(
    wake_ups: &StreamWakeUps,
    request: Request,
    recorded: Result<(Recorded, Option<i64>), PhaseError>,
) {
    let recorded = recorded.map(|(recorded, last_seq)| {
        if let Some(seq) = last_seq {
            wake_ups.after_commit(request.attempt.p.run_id, seq);
        }
        recorded
    });
    let _ = request.answer.send(recorded);
}
