//! Logging and tracing. Log lines, human or JSON, go to stderr through `tracing`. When
//! `[trace] otlp_endpoint` is set, every span is also exported over OTLP/gRPC, and the W3C
//! trace context (`traceparent`, `tracestate`) is carried across process boundaries: in
//! NATS message headers ([`inject`] and [`set_parent`] over a header map) and in gRPC
//! metadata ([`PropagateTrace`] on clients, [`request_span`] on servers). The spans of
//! one message thus share one trace from the SMTP session to the last delivery attempt.
//!
//! With no endpoint configured there is no OpenTelemetry layer: spans carry no trace
//! context, [`inject`] writes nothing and no header or metadata is added.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat, TraceConfig};

/// Why tracing could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to {endpoint}: {reason}")]
pub struct TelemetryError {
    /// The configured collector endpoint.
    endpoint: String,
    /// What the exporter said.
    reason: String,
}

/// Keeps the span exporter of a process; [`Telemetry::shutdown`] sends what is buffered.
#[must_use = "spans still buffered are lost unless shutdown is called"]
pub struct Telemetry {
    /// The tracer provider, when spans are exported.
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "spans not exported at shutdown");
        }
    }
}

/// Installs the global subscriber: log lines, and the OpenTelemetry layer when a collector
/// is configured (spans named after `service`). `RUST_LOG`, when set, overrides the
/// configured level. Must run inside the tokio runtime (the exporter's gRPC channel lives
/// there).
pub fn init(
    log: &LogConfig,
    trace: &TraceConfig,
    service: &'static str,
) -> Result<Telemetry, TelemetryError> {
    // `log.level` was checked when the configuration was read; a bad `RUST_LOG` is said
    // once the subscriber is up, and the configured level applies.
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .map(|directive| EnvFilter::try_new(&directive).map_err(|e| (directive, e)));
    let (filter, bad_env) = match from_env {
        Some(Ok(filter)) => (filter, None),
        other => (
            EnvFilter::try_new(&log.level.0).unwrap_or_else(|_| EnvFilter::new("info")),
            other.and_then(Result::err),
        ),
    };
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match log.format {
        LogFormat::Human => lines.boxed(),
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
    };
    let provider = match &trace.otlp_endpoint {
        Some(endpoint) => Some(provider(endpoint, trace.sample_ratio.0, service)?),
        None => None,
    };
    let spans = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_tracked_inactivity(false)
    });
    // A second init (tests that start several services in one process) keeps the first.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(spans)
        .try_init();
    if let Some((directive, error)) = bad_env {
        tracing::warn!(%directive, %error, level = %log.level.0, "RUST_LOG is not a filter directive; using log.level");
    }
    Ok(Telemetry { provider })
}

fn provider(
    endpoint: &str,
    ratio: f64,
    service: &'static str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TelemetryError {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        })?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// Writes the trace context of `span` through `set` (header name, value); nothing when
/// the span has none (tracing off, or the span is disabled).
pub fn inject(span: &Span, set: impl FnMut(&'static str, String)) {
    let context = span.context();
    TraceContextPropagator::new().inject_context(&context, &mut Setter(set));
}

/// Makes the trace context that `get` finds (by header name) the parent of `span`;
/// nothing happens when there is none, or when tracing is off.
pub fn set_parent<'a>(span: &Span, get: impl Fn(&str) -> Option<&'a str>) {
    let context = TraceContextPropagator::new().extract(&Getter(get, std::marker::PhantomData));
    // Fails only when tracing is off or the span is disabled: then there is no trace to join.
    let _ = span.set_parent(context);
}

/// The span of one gRPC request to a mailflow server, a child of the caller's span when
/// the request's metadata carries one. Health checks and reflection get none: probes would
/// otherwise fill the collector.
pub fn request_span(request: &tonic::codegen::http::Request<()>) -> Span {
    let path = request.uri().path();
    if path.starts_with("/grpc.") {
        return Span::none();
    }
    let span = tracing::info_span!("grpc", otel.name = %path, otel.kind = "server");
    set_parent(&span, |name| {
        request.headers().get(name).and_then(|v| v.to_str().ok())
    });
    span
}

/// A gRPC client interceptor that puts the current span's trace context in the request
/// metadata, so that the server's spans join the caller's trace.
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateTrace;

impl tonic::service::Interceptor for PropagateTrace {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata_mut();
        inject(&Span::current(), |name, value| {
            if let Ok(value) = value.parse() {
                metadata.insert(name, value);
            }
        });
        Ok(request)
    }
}

/// A client channel whose requests carry the caller's trace context.
pub type TracedChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, PropagateTrace>;

/// Adapts a closure to the propagator's [`Injector`].
struct Setter<F>(F);

impl<F: FnMut(&'static str, String)> Injector for Setter<F> {
    fn set(&mut self, key: &str, value: String) {
        // The W3C propagator writes only these two names; naming them statically spares
        // the header maps an allocation.
        match key {
            "traceparent" => (self.0)("traceparent", value),
            "tracestate" => (self.0)("tracestate", value),
            _ => {}
        }
    }
}

/// Adapts a closure to the propagator's [`Extractor`]; the marker ties the values' lifetime
/// to the adapter's, so they can be handed out as borrowed from it.
struct Getter<'a, F>(F, std::marker::PhantomData<&'a str>);

impl<'a, F: Fn(&str) -> Option<&'a str>> Extractor for Getter<'a, F> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_tracing_nothing_is_injected_or_joined() {
        let mut written = Vec::new();
        inject(&tracing::info_span!("x"), |k, v| written.push((k, v)));
        assert!(written.is_empty(), "{written:?}");
        // A valid parent on a span that is not traced is ignored without error.
        set_parent(&tracing::info_span!("y"), |name| {
            (name == "traceparent")
                .then_some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        });
    }
}
