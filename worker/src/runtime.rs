//! The claim loop and its companions (heartbeats, rescue, wake-ups), and graceful
//! shutdown. Every task is owned by a `JoinSet`; shutdown flows from one token.

use crate::completer::Completer;
use crate::config::WorkerConfig;
use crate::handler::{JobContext, JobError, JobHandler, MayGoOn};
use crate::inflight::{InFlight, StopReason};
use phasefleet::WorkerId;
use phasefleet::queue::{self, ClaimedJob, Lease, QueueError, notify, workers as registry};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Throughput rows (`job_completions`) are kept this long ...
const COMPLETIONS_KEPT: Duration = Duration::from_secs(24 * 3600);
/// ... and pruned every this many rescue passes.
const COMPLETIONS_PRUNE_EVERY: u64 = 500;

/// The most completions one batch statement may carry.
pub const MAX_COMPLETION_BATCH: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid worker configuration: {0}")]
    Config(String),
}

/// One worker process's runtime. Cheap to build; [`Worker::run`] does the work.
pub struct Worker<H> {
    id: WorkerId,
    pool: PgPool,
    cfg: WorkerConfig,
    handler: Arc<H>,
    force: CancellationToken,
}

/// State shared by the loop and its companion tasks.
struct Shared {
    id: WorkerId,
    pool: PgPool,
    cfg: WorkerConfig,
    inflight: InFlight,
    wake: Arc<Notify>,
    draining: Arc<AtomicBool>,
    /// Fires when the worker begins to shut down.
    stopping: CancellationToken,
    /// What the handler can do (advertised; jobs requiring one of these are claimed).
    capabilities: Vec<String>,
    completer: Completer,
    /// Jobs completed since the last heartbeat that was written (its throughput row).
    completed: AtomicU64,
}

impl Shared {
    /// Act on a notification: look for work, or stop a cancelled job now.
    fn hear(&self, notice: notify::Notice) {
        match notice {
            notify::Notice::JobReady => self.wake.notify_one(),
            notify::Notice::CancelRun(run) => {
                self.inflight.stop_run(run, StopReason::Cancelled);
            }
            notify::Notice::CancelJob(job) => self.inflight.stop(job, StopReason::Cancelled),
        }
    }

    /// Write the worker's heartbeat with the jobs completed since the last one (kept
    /// for the next heartbeat when this one fails).
    async fn beat(&self, in_flight: usize, state: &str) -> Result<bool, sqlx::Error> {
        let mut unwritten = Unwritten {
            counter: &self.completed,
            count: self.completed.swap(0, Ordering::AcqRel),
        };
        let beat = registry::Heartbeat {
            id: self.id,
            queue: &self.cfg.queue,
            in_flight,
            state,
            completed: unwritten.count,
        };
        let drain = registry::heartbeat(&self.pool, &beat).await?;
        unwritten.count = 0;
        Ok(drain)
    }
}

/// Completions taken off the counter for a heartbeat: put back unless written.
struct Unwritten<'a> {
    counter: &'a AtomicU64,
    count: u64,
}

impl Drop for Unwritten<'_> {
    fn drop(&mut self) {
        self.counter.fetch_add(self.count, Ordering::AcqRel);
    }
}

impl<H: JobHandler> Worker<H> {
    #[must_use]
    pub fn new(pool: PgPool, cfg: WorkerConfig, handler: H) -> Self {
        Self {
            id: WorkerId::new(),
            pool,
            cfg,
            handler: Arc::new(handler),
            force: CancellationToken::new(),
        }
    }

    #[must_use]
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// A token that, once `shutdown` has fired, skips the rest of the grace period
    /// (a second Ctrl-C).
    #[must_use]
    pub fn with_force(mut self, force: CancellationToken) -> Self {
        self.force = force;
        self
    }

    /// Run until `shutdown` fires, then stop claiming, let in-flight jobs finish within
    /// the grace period, hand the rest back without spending an attempt, and mark this
    /// worker stopped. Database outages are waited out, never fatal.
    ///
    /// # Errors
    /// [`WorkerError::Config`] for an unusable configuration.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        self.check_config()?;
        let (completer, flush_task) = Completer::new(
            self.pool.clone(),
            self.cfg.completion_batch,
            self.cfg.completion_delay,
        );
        let shared = Arc::new(Shared {
            id: self.id,
            pool: self.pool.clone(),
            cfg: self.cfg.clone(),
            inflight: InFlight::default(),
            wake: Arc::new(Notify::new()),
            draining: Arc::new(AtomicBool::new(false)),
            stopping: shutdown.clone(),
            capabilities: self.handler.capabilities(),
            completer,
            completed: AtomicU64::new(0),
        });
        let worker_span =
            tracing::info_span!("worker", worker_id = %self.id, queue = %self.cfg.queue);
        async {
            // 1. Register, then start the services: notices, heartbeats, lease
            //    renewals, rescue and the completion batches.
            if !register_with_retry(&shared, &shutdown).await {
                return;
            }
            tracing::info!(name = %shared.cfg.name, concurrency = shared.cfg.concurrency, "worker started");
            let services_stop = CancellationToken::new();
            let mut services = self.start_services(&shared, flush_task, &services_stop);
            // 2. Claim and run jobs until shutdown, then wind down.
            let mut jobs = JoinSet::new();
            self.claim_loop(&shared, &mut jobs, &shutdown).await;
            self.wind_down(&shared, &mut jobs).await;
            // 3. Stop the services after the last job, and say so.
            services_stop.cancel();
            while services.join_next().await.is_some() {}
            // The last heartbeat counts the last completions.
            let _ = shared.beat(0, "stopped").await;
            if let Err(err) = registry::mark_stopped(&shared.pool, shared.id).await {
                tracing::warn!(error = %err, "could not mark worker stopped");
            }
            tracing::info!("worker stopped");
        }
        .instrument(worker_span)
        .await;
        Ok(())
    }

    fn check_config(&self) -> Result<(), WorkerError> {
        if self.cfg.concurrency == 0 {
            return Err(WorkerError::Config("concurrency must be at least 1".into()));
        }
        if !(1..=MAX_COMPLETION_BATCH).contains(&self.cfg.completion_batch) {
            return Err(WorkerError::Config(format!(
                "completion_batch must be between 1 and {MAX_COMPLETION_BATCH}, got {}",
                self.cfg.completion_batch
            )));
        }
        if self.cfg.lease < Duration::from_millis(300) {
            return Err(WorkerError::Config("lease must be at least 300ms".into()));
        }
        Ok(())
    }

    /// The tasks beside the jobs, until `stop`: notices forwarded, heartbeats, lease
    /// renewals, rescue, and the completion batches (stopped with the others, after the
    /// last job has ended).
    fn start_services(
        &self,
        shared: &Arc<Shared>,
        flush_task: crate::completer::FlushTask,
        stop: &CancellationToken,
    ) -> JoinSet<()> {
        let mut services = JoinSet::new();
        let heard = shared.clone();
        services.spawn(notify::forward(
            shared.pool.clone(),
            shared.cfg.queue.clone(),
            move |notice| heard.hear(notice),
            stop.clone(),
        ));
        services.spawn(heartbeat_loop(shared.clone(), stop.clone()));
        services.spawn(lease_loop(shared.clone(), stop.clone()));
        services.spawn(rescue_loop(
            shared.clone(),
            self.handler.clone(),
            stop.clone(),
        ));
        let flush_stop = stop.clone();
        services.spawn(async move {
            let batches = flush_task.run(flush_stop).await;
            tracing::debug!(batches, "completion batches written");
        });
        services
    }

    async fn claim_loop(
        &self,
        shared: &Arc<Shared>,
        jobs: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) {
        let mut error_delay = Duration::from_millis(100);
        // While claims follow each other (each filled, slots still free), the loop
        // keeps its connection: a claim never queues for one behind the running jobs'
        // SQL (a worker with thousands of phases has far fewer connections than jobs).
        // It gives it back before it waits.
        let mut conn = None;
        loop {
            while let Some(res) = jobs.try_join_next() {
                log_join(res);
            }
            if shutdown.is_cancelled() {
                return;
            }
            if !shared.inflight.is_empty() {
                // Let jobs that are finishing right now (a completion batch just
                // answered many at once) free their slots first, so one claim tends
                // to cover many of them. Costs nothing when none are ready.
                tokio::task::yield_now().await;
            }
            let free = shared.cfg.concurrency.saturating_sub(shared.inflight.len());
            let wanted = free.min(shared.cfg.claim_batch.max(1));
            let mut filled = false;
            if wanted > 0 && !shared.draining.load(Ordering::Acquire) {
                match claim(shared, &mut conn, wanted).await {
                    Ok(claimed) => {
                        error_delay = Duration::from_millis(100);
                        let n = claimed.len();
                        for job in claimed {
                            self.spawn_job(shared, jobs, job);
                        }
                        filled = n == wanted;
                        if filled {
                            // Possibly more waiting: claim again as soon as a slot frees.
                            shared.wake.notify_one();
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, retry_in_ms = error_delay.as_millis(), "claim failed");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(error_delay) => {}
                        }
                        error_delay = (error_delay * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            let full = shared.inflight.len() >= shared.cfg.concurrency;
            if !filled || full {
                conn = None;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(res) = jobs.join_next(), if !jobs.is_empty() => log_join(res),
                () = shared.wake.notified(), if !full => {}
                () = tokio::time::sleep(shared.cfg.poll_interval) => {}
            }
        }
    }

    fn spawn_job(&self, shared: &Arc<Shared>, jobs: &mut JoinSet<()>, job: ClaimedJob) {
        let lease = job.lease();
        let cancel = CancellationToken::new();
        shared.inflight.insert(lease, job.run_id, cancel.clone());
        let span = tracing::info_span!(
            "job",
            job_id = %job.id,
            kind = %job.kind,
            attempt = job.attempts,
            run_id = job.run_id.map(|r| r.to_string()),
        );
        let ctx = JobContext {
            job,
            pool: shared.pool.clone(),
            worker_id: shared.id,
            cancel,
            completer: shared.completer.clone(),
            may_go_on: MayGoOn {
                draining: shared.draining.clone(),
                stopping: shared.stopping.clone(),
            },
        };
        let handler = self.handler.clone();
        let shared = shared.clone();
        jobs.spawn(
            async move {
                // The handler runs in its own task so a panic is caught as a JoinError
                // and recorded as a retryable failure instead of vanishing.
                let result =
                    match tokio::spawn(async move { handler.handle(ctx).await }.in_current_span())
                        .await
                    {
                        Ok(r) => r,
                        Err(join) => Err(JobError::retry(format!("handler panicked: {join}"))),
                    };
                let reason = shared.inflight.remove(lease.job_id);
                // Boxed: a job in flight holds no space for this future.
                Box::pin(record_outcome(&shared, &lease, result, reason)).await;
                // A slot is free.
                shared.wake.notify_one();
            }
            .instrument(span),
        );
    }

    async fn wind_down(&self, shared: &Arc<Shared>, jobs: &mut JoinSet<()>) {
        if jobs.is_empty() {
            return;
        }
        tracing::info!(
            in_flight = jobs.len(),
            grace_ms = shared.cfg.shutdown_grace.as_millis(),
            "shutting down: finishing in-flight jobs"
        );
        let _ = shared.beat(jobs.len(), "draining").await;
        let grace = tokio::time::sleep(shared.cfg.shutdown_grace);
        tokio::pin!(grace);
        while !jobs.is_empty() {
            tokio::select! {
                Some(res) = jobs.join_next() => log_join(res),
                () = &mut grace => break,
                () = self.force.cancelled() => break,
            }
        }
        if jobs.is_empty() {
            return;
        }
        tracing::info!(
            in_flight = jobs.len(),
            "grace period over: interrupting and handing back"
        );
        shared.inflight.stop_all(StopReason::Shutdown);
        let hard_stop = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(hard_stop);
        while !jobs.is_empty() {
            tokio::select! {
                Some(res) = jobs.join_next() => log_join(res),
                () = &mut hard_stop => {
                    tracing::warn!(in_flight = jobs.len(), "handlers ignored interruption; abandoning them to lease expiry");
                    jobs.abort_all();
                    break;
                }
            }
        }
    }
}

fn log_join(res: Result<(), tokio::task::JoinError>) {
    if let Err(err) = res {
        tracing::error!(error = %err, "job task failed");
    }
}

/// Claim up to `wanted` jobs on the loop's connection (taken from the pool when there
/// is none; dropped after an error, so the next claim starts on a fresh one).
async fn claim(
    shared: &Shared,
    conn: &mut Option<PoolConnection<Postgres>>,
    wanted: usize,
) -> Result<Vec<ClaimedJob>, QueueError> {
    let mut held = match conn.take() {
        Some(held) => held,
        None => shared.pool.acquire().await?,
    };
    let jobs = queue::claim_capable(
        &mut held,
        shared.id,
        &shared.cfg.queue,
        i64::try_from(wanted).unwrap_or(i64::MAX),
        shared.cfg.lease,
        &shared.capabilities,
    )
    .await?;
    *conn = Some(held);
    metrics::counter!("phasefleet_jobs_claimed_total", "queue" => shared.cfg.queue.clone())
        .increment(jobs.len() as u64);
    Ok(jobs)
}

async fn register_with_retry(shared: &Shared, shutdown: &CancellationToken) -> bool {
    let mut delay = Duration::from_millis(100);
    loop {
        let host = crate::config::hostname();
        let queues = [shared.cfg.queue.clone()];
        let me = registry::NewWorker {
            id: shared.id,
            name: &shared.cfg.name,
            host: &host,
            pid: std::process::id(),
            queues: &queues,
            concurrency: shared.cfg.concurrency,
            capabilities: &shared.capabilities,
        };
        match registry::register(&shared.pool, &me).await {
            Ok(()) => return true,
            Err(err) => tracing::warn!(error = %err, "cannot register worker; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Write what a delivery's result means for the job. Transient database errors are
/// retried for about one lease length; after that the lease expires and the job is
/// rescued, which is the same outcome by another road.
async fn record_outcome(
    shared: &Shared,
    lease: &Lease,
    result: Result<queue::Completed, JobError>,
    reason: Option<StopReason>,
) {
    let err = match result {
        Ok(_completed) => {
            tracing::debug!("job completed");
            shared.completed.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("phasefleet_jobs_completed_total", "queue" => shared.cfg.queue.clone())
                .increment(1);
            return;
        }
        Err(err) => err,
    };
    let outcome = match (&reason, &err) {
        (Some(_), _) | (_, JobError::Queue(QueueError::LeaseLost { .. })) => "handed_back",
        (None, JobError::Permanent(_)) => "dead",
        (None, _) => "retry",
    };
    metrics::counter!("phasefleet_jobs_failed_total", "queue" => shared.cfg.queue.clone(), "outcome" => outcome)
        .increment(1);
    let deadline = tokio::time::Instant::now() + shared.cfg.lease;
    let mut delay = Duration::from_millis(50);
    loop {
        match write_outcome(shared, lease, &err, reason).await {
            Ok(()) => return,
            Err(QueueError::LeaseLost { .. }) => {
                tracing::info!("lease lost; outcome not recorded (another worker owns the job)");
                return;
            }
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not record job outcome; the lease will expire and the job be rescued");
                return;
            }
        }
    }
}

async fn write_outcome(
    shared: &Shared,
    lease: &Lease,
    err: &JobError,
    reason: Option<StopReason>,
) -> Result<(), QueueError> {
    let mut conn = shared.pool.acquire().await?;
    match (reason, err) {
        (Some(StopReason::LeaseLost), _) | (_, JobError::Queue(QueueError::LeaseLost { .. })) => {
            Err(QueueError::LeaseLost {
                job_id: lease.job_id,
                token: lease.token,
            })
        }
        (Some(StopReason::Shutdown | StopReason::Cancelled | StopReason::LeaseUnrenewed), _) => {
            tracing::info!(?reason, "handing job back");
            queue::hand_back(&mut conn, lease).await
        }
        (None, JobError::Permanent(msg)) => {
            tracing::warn!(error = %msg, "job failed permanently; dead-lettered");
            queue::fail(&mut conn, lease, msg).await
        }
        (None, JobError::Retry { message, after }) => {
            let outcome =
                queue::retry(&mut conn, lease, message, &shared.cfg.backoff, *after).await?;
            tracing::warn!(error = %message, ?outcome, "job failed");
            Ok(())
        }
        (None, other) => {
            let message = other.to_string();
            let outcome =
                queue::retry(&mut conn, lease, &message, &shared.cfg.backoff, None).await?;
            tracing::warn!(error = %message, ?outcome, "job failed");
            Ok(())
        }
    }
}

/// Renew the leases of the jobs in flight four times a lease (each try bounded by a
/// quarter lease, so one slow or lost try still leaves the next in time), and stop
/// every job whose lease was not renewed within the lease length: PostgreSQL may have
/// given it to another worker (a partition, a stalled process), so this one must not
/// go on. Its completion would be refused by the fence anyway; stopping it early saves
/// the model calls.
async fn lease_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.cfg.lease / 4;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        renew_leases(&shared, every).await;
        for id in shared.inflight.stop_unrenewed(shared.cfg.lease) {
            tracing::warn!(job_id = %id, lease_ms = shared.cfg.lease.as_millis(), "lease not renewed in time; interrupting job");
        }
    }
}

async fn renew_leases(shared: &Shared, bound: Duration) {
    let leases = shared.inflight.leases();
    if leases.is_empty() {
        return;
    }
    let sent_at = std::time::Instant::now();
    let report = tokio::time::timeout(bound, async {
        let mut conn = shared.pool.acquire().await?;
        queue::heartbeat(&mut conn, &leases, shared.cfg.lease).await
    })
    .await;
    match report {
        Err(_elapsed) => tracing::warn!("lease heartbeat timed out"),
        Ok(Err(err)) => tracing::warn!(error = %err, "lease heartbeat failed"),
        Ok(Ok(report)) => {
            let extended: Vec<_> = leases
                .iter()
                .filter(|l| !report.busy.contains(&l.job_id))
                .copied()
                .collect();
            shared.inflight.renewed(&extended, sent_at);
            for id in report.lost {
                if report.gone.contains(&id) {
                    // Completed while the renewal was on its way: nothing to warn about.
                    tracing::debug!(job_id = %id, "job left the queue during a lease renewal");
                } else {
                    tracing::warn!(job_id = %id, "lease lost; interrupting job");
                }
                shared.inflight.stop(id, StopReason::LeaseLost);
            }
            for id in report.cancel_requested {
                tracing::info!(job_id = %id, "cancel requested; interrupting job");
                shared.inflight.stop(id, StopReason::Cancelled);
            }
        }
    }
}

/// The worker's own heartbeat (state, in flight, throughput; drain requests come back).
///
/// Each beat runs as its own task: one stuck on a cut link is waited for at most a lease
/// length and then left to finish, never cancelled mid-statement. A cancelled beat
/// could not tell whether its completions were written, and putting them back would
/// count them twice. While a beat is still on its way the next ones are skipped.
async fn heartbeat_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let interval = shared.cfg.lease / 3;
    let mut on_its_way: Option<tokio::task::JoinHandle<Result<bool, sqlx::Error>>> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if on_its_way.as_ref().is_some_and(|beat| !beat.is_finished()) {
            tracing::warn!("previous worker heartbeat still on its way; skipping this one");
            continue;
        }
        let draining = shared.draining.load(Ordering::Acquire);
        let in_flight = shared.inflight.len();
        let state = match (draining, in_flight) {
            (false, _) => "running",
            (true, 0) => "drained",
            (true, _) => "draining",
        };
        let beating = shared.clone();
        let mut beat = tokio::spawn(async move { beating.beat(in_flight, state).await });
        on_its_way = None;
        match tokio::time::timeout(shared.cfg.lease, &mut beat).await {
            Err(_elapsed) => {
                tracing::warn!("worker heartbeat timed out");
                on_its_way = Some(beat);
            }
            Ok(Ok(Ok(drain))) => {
                if drain != draining {
                    tracing::info!(drain, "drain state changed");
                    shared.draining.store(drain, Ordering::Release);
                    shared.wake.notify_one();
                }
            }
            Ok(Ok(Err(err))) => tracing::warn!(error = %err, "worker heartbeat failed"),
            Ok(Err(join_err)) => tracing::warn!(error = %join_err, "worker heartbeat task ended"),
        }
    }
}

async fn rescue_loop<H: JobHandler>(shared: Arc<Shared>, handler: Arc<H>, stop: CancellationToken) {
    let mut tick: u64 = 0;
    loop {
        tick += 1;
        if tick.is_multiple_of(5) {
            handler.maintain().await;
        }
        if tick.is_multiple_of(COMPLETIONS_PRUNE_EVERY) {
            let pruned = registry::prune_completions(&shared.pool, COMPLETIONS_KEPT).await;
            if let Err(err) = pruned {
                tracing::debug!(error = %err, "pruning throughput rows failed");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(shared.cfg.rescue_interval) => {}
        }
        let rescued = async {
            let mut conn = shared.pool.acquire().await?;
            queue::rescue_expired(&mut conn, 100).await
        }
        .await;
        match rescued {
            Ok(r) if !r.is_empty() => {
                for job in &r {
                    tracing::warn!(job_id = %job.id, dead = job.dead, "rescued job from a lost worker");
                }
                shared.wake.notify_one();
            }
            Ok(_) => {}
            Err(err) => tracing::debug!(error = %err, "rescue pass failed"),
        }
    }
}
