//! What the load generators share: connecting to a gRPC service and latency percentiles.

use std::time::Duration;

use tonic::transport::Channel;

/// A channel to `url`, or an exit with a message (64 for a bad url, 1 when unreachable).
pub async fn connect(url: &str) -> Channel {
    match Channel::from_shared(url.to_string()) {
        Ok(endpoint) => match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot connect to {url}: {e}");
                std::process::exit(1);
            }
        },
        Err(e) => {
            eprintln!("bad url {url}: {e}");
            std::process::exit(64);
        }
    }
}

/// The `p` percentile of sorted latencies.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}
