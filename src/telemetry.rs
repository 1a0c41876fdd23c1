//! The one tracing setup every binary uses: log lines to stderr, filtered by
//! `RUST_LOG` (default given by the binary). Spans carry `run_id`, `phase` and `job_id`
//! where the work has them.
//!
//! Traces (off unless configured): with `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL;
//! `/v1/traces` is appended) or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is), spans
//! are exported over OTLP/HTTP (JSON). One trace per run: the API's `submit_run` span
//! is its root (a child of the caller's W3C `traceparent`, when the request has one);
//! the run stores its trace context, every phase job carries it across the queue, and
//! each phase attempt's span (`phase`) continues the trace, with a span per model call
//! (`model_call`) and per tool call (`tool_call`) under it.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The spans a run's trace is made of.
pub const TRACED_SPANS: &[&str] = &["submit_run", "phase", "model_call", "tool_call"];

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes what is buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Export every span still buffered (call before the process exits).
    pub fn shutdown(&self) {
        if let Some(p) = &self.provider {
            if let Err(e) = p.force_flush() {
                tracing::warn!(error = %e, "flushing traces failed");
            }
            let _ = p.shutdown();
        }
    }

    /// Export every span ended so far.
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }
}

/// The OTLP traces endpoint the environment configures, if any.
#[must_use]
pub fn otlp_endpoint_from_env() -> Option<String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
        env("OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
    })
}

/// Install the global subscriber (logs, plus traces when the environment configures an
/// endpoint). Calling it twice keeps the first.
pub fn init(default_filter: &str) -> Telemetry {
    init_with(
        default_filter,
        "phasefleet",
        otlp_endpoint_from_env().as_deref(),
    )
}

/// [`init`] with the service name and the OTLP traces endpoint given.
pub fn init_with(default_filter: &str, service: &str, otlp_traces: Option<&str>) -> Telemetry {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    // `RUST_LOG` filters the log lines only: a quiet log level must not cut a run's
    // spans out of its trace.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let provider = otlp_traces.and_then(|endpoint| match tracer_provider(endpoint, service) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("traces are off: the OTLP exporter for {endpoint} could not be built: {e}");
            None
        }
    });
    // Only the spans of a run's trace are exported (a worker's own spans live as long
    // as the worker and are not about one run).
    let otel = provider.as_ref().map(|p| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("phasefleet"))
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                TRACED_SPANS.contains(&meta.name())
            }))
    });
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Telemetry { provider }
}

fn tracer_provider(
    endpoint: &str,
    service: &str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(endpoint)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

struct Carrier<'a>(&'a mut HashMap<String, String>);

impl Injector for Carrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct Reader<'a>(&'a HashMap<String, String>);

impl Extractor for Reader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The W3C `traceparent` of `span` (`None` when traces are off or it is not sampled).
#[must_use]
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let mut fields = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut Carrier(&mut fields));
    fields.remove("traceparent")
}

/// Make `span` a child of `traceparent` (a W3C header value; a malformed one is
/// ignored, as the W3C rules say).
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    if traceparent.len() > 128 {
        return;
    }
    let fields = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&Reader(&fields));
    let _ = span.set_parent(cx);
}
