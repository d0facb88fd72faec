//! Prometheus metrics: each service serves `/metrics` on its `metrics_listen` address
//! (off when none is set). Counters, gauges and histograms are recorded with the `metrics`
//! crate's macros where things happen; this module only installs the exporter.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Latency buckets in seconds: from a fraction of a millisecond (policy checks) to minutes
/// (acceptance to delivery with retries).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 900.0, 3600.0,
];

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {reason}")]
pub struct MetricsError {
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    pub reason: String,
}

/// Serves `/metrics` on `listen` (must run inside the tokio runtime).
pub fn install(listen: SocketAddr) -> Result<(), MetricsError> {
    let error = |e: &dyn std::fmt::Display| MetricsError {
        addr: listen,
        reason: e.to_string(),
    };
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .map_err(|e| error(&e))?
        .install()
        .map_err(|e| error(&e))
}
