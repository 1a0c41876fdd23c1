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
    gauge(
        &mut out,
        "phasefleet_queue_jobs",
        "Jobs by queue and state (ready, running, dead).",
        g.jobs_by_state.iter().map(|j| {
            let labels = format!("{{queue=\"{}\",state=\"{}\"}}", escape(&j.queue), j.state);
            (labels, j.jobs.to_string())
        }),
    );
    gauge(
        &mut out,
        "phasefleet_queue_depth",
        "Jobs ready to run now (autoscale on this).",
        g.ready_now
            .iter()
            .map(|r| (queue_label(&r.queue), r.jobs.to_string())),
    );
    gauge(
        &mut out,
        "phasefleet_queue_oldest_ready_seconds",
        "Age of the oldest job ready to run.",
        g.ready_now
            .iter()
            .map(|r| (queue_label(&r.queue), format!("{:.3}", r.oldest_secs))),
    );
    gauge(
        &mut out,
        "phasefleet_runs_active",
        "Runs not yet ended, by state.",
        g.active_runs
            .iter()
            .map(|r| (state_label(&r.state), r.runs.to_string())),
    );
    gauge(
        &mut out,
        "phasefleet_approvals_pending",
        "Approval requests waiting on a human.",
        [(String::new(), g.pending_approvals.to_string())],
    );
    gauge(
        &mut out,
        "phasefleet_workers",
        "Live workers by state.",
        g.workers
            .iter()
            .map(|w| (state_label(&w.state), w.workers.to_string())),
    );
    let in_flight: i64 = g.workers.iter().map(|w| w.in_flight).sum();
    gauge(
        &mut out,
        "phasefleet_jobs_in_flight",
        "Jobs held by live workers.",
        [(String::new(), in_flight.to_string())],
    );
    Ok(out)
}

/// One gauge in the text format: its HELP and TYPE lines, then a sample per
/// (labels, value).
fn gauge(
    out: &mut String,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, String)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

fn queue_label(queue: &str) -> String {
    format!("{{queue=\"{}\"}}", escape(queue))
}

fn state_label(state: &str) -> String {
    format!("{{state=\"{}\"}}", escape(state))
}
