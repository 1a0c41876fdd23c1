//! `/metrics` in the Prometheus text format: this process's own counters (HTTP, and in
//! `phasefleet dev` also claims, completions, phase durations, LLM tokens and cost,
//! recorded by the worker and the agent) followed by fleet-wide gauges (queue depth,
//! oldest ready job, runs by state, pending approvals, workers). The gauges are read
//! from PostgreSQL by one task every few seconds, never per scrape, so scrapers cannot
//! load the database. Worker processes export their counters on their own port.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use std::fmt::Write;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the fleet-wide gauges are read from PostgreSQL.
pub const GAUGE_REFRESH: Duration = Duration::from_secs(5);

/// The last rendering of the fleet-wide gauges, refreshed by a background task.
#[derive(Clone, Default)]
pub struct FleetGauges {
    text: Arc<RwLock<String>>,
}

impl FleetGauges {
    /// Start the refresh task; it stops when `shutdown` fires.
    #[must_use]
    pub fn start(pool: PgPool, shutdown: CancellationToken) -> Self {
        let gauges = Self::default();
        let text = gauges.text.clone();
        tokio::spawn(async move {
            loop {
                match fleet_gauges(&pool).await {
                    Ok(fresh) => {
                        ::metrics::counter!("phasefleet_api_gauge_refreshes_total").increment(1);
                        if let Ok(mut t) = text.write() {
                            *t = fresh;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "refreshing the fleet gauges failed"),
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(GAUGE_REFRESH) => {}
                }
            }
        });
        gauges
    }

    /// The gauges as of the last refresh.
    #[must_use]
    pub fn render(&self) -> String {
        self.text.read().map(|t| t.clone()).unwrap_or_default()
    }
}

/// Install the process-wide recorder once; later calls return the same handle.
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(phasefleet::phase::DURATION_BUCKETS_SECS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(h) => h,
                // Another recorder is installed (embedding program): render ours alone.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The gauges, read through the store and rendered.
async fn fleet_gauges(pool: &PgPool) -> Result<String, sqlx::Error> {
    let g = phasefleet::store::fleet::fleet_gauges(&mut *pool.acquire().await?).await?;
    let mut out = String::new();
    out.push_str("# HELP phasefleet_queue_jobs Jobs by queue and state (ready, running, dead).\n# TYPE phasefleet_queue_jobs gauge\n");
    for j in &g.jobs_by_state {
        let _ = writeln!(
            out,
            "phasefleet_queue_jobs{{queue=\"{}\",state=\"{}\"}} {}",
            escape(&j.queue),
            j.state,
            j.jobs
        );
    }
    out.push_str("# HELP phasefleet_queue_depth Jobs ready to run now (autoscale on this).\n# TYPE phasefleet_queue_depth gauge\n");
    for r in &g.ready_now {
        let _ = writeln!(
            out,
            "phasefleet_queue_depth{{queue=\"{}\"}} {}",
            escape(&r.queue),
            r.jobs
        );
    }
    out.push_str("# HELP phasefleet_queue_oldest_ready_seconds Age of the oldest job ready to run.\n# TYPE phasefleet_queue_oldest_ready_seconds gauge\n");
    for r in &g.ready_now {
        let _ = writeln!(
            out,
            "phasefleet_queue_oldest_ready_seconds{{queue=\"{}\"}} {:.3}",
            escape(&r.queue),
            r.oldest_secs
        );
    }
    out.push_str("# HELP phasefleet_runs_active Runs not yet ended, by state.\n# TYPE phasefleet_runs_active gauge\n");
    for r in &g.active_runs {
        let _ = writeln!(
            out,
            "phasefleet_runs_active{{state=\"{}\"}} {}",
            r.state, r.runs
        );
    }
    let _ = writeln!(
        out,
        "# HELP phasefleet_approvals_pending Approval requests waiting on a human.\n# TYPE phasefleet_approvals_pending gauge\nphasefleet_approvals_pending {}",
        g.pending_approvals
    );
    out.push_str(
        "# HELP phasefleet_workers Live workers by state.\n# TYPE phasefleet_workers gauge\n",
    );
    for w in &g.workers {
        let _ = writeln!(
            out,
            "phasefleet_workers{{state=\"{}\"}} {}",
            escape(&w.state),
            w.workers
        );
    }
    out.push_str("# HELP phasefleet_jobs_in_flight Jobs held by live workers.\n# TYPE phasefleet_jobs_in_flight gauge\n");
    let _ = writeln!(
        out,
        "phasefleet_jobs_in_flight {}",
        g.workers.iter().map(|w| w.in_flight).sum::<i64>()
    );
    Ok(out)
}
