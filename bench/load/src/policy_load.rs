//! `policy-load`: recipient checks against the policy service from many concurrent callers
//! sharing one HTTP/2 channel, as ingress replicas do; prints throughput and latency
//! percentiles.
//!
//! Usage: `policy-load <policy url> <callers> <seconds>`. It adds the domain `load.test`
//! with the user `known@load.test`, warms the caches for a second, then asks in a mix that
//! an MX session produces: an existing user, an unknown user (refused), and a remote domain
//! from a relay-allowed client (a DNS-backed check).

#![forbid(unsafe_code)]

use mailflow_bench as common;

use std::time::{Duration, Instant};

use mailflow_proto::v1::{
    AddDomainRequest, AddUserRequest, CheckRecipientRequest, SessionInfo,
    directory_client::DirectoryClient, policy_client::PolicyClient,
};
use tonic::transport::Channel;

const RECIPIENTS: [&str; 3] = [
    "known@load.test",
    "nobody@load.test",
    "someone@remote.bench.test",
];

fn request(i: usize) -> CheckRecipientRequest {
    CheckRecipientRequest {
        session: Some(SessionInfo {
            client_ip: "127.0.0.1".into(),
            helo: "client.bench.test".into(),
            auth_identity: String::new(),
            listener: "mx".into(),
        }),
        sender: "sender@client.bench.test".into(),
        recipient: RECIPIENTS[i % RECIPIENTS.len()].into(),
    }
}

/// Runs `policy` checks until `until`; returns each one's latency.
async fn caller(mut policy: PolicyClient<Channel>, until: Instant, seed: usize) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let mut i = seed;
    while Instant::now() < until {
        let started = Instant::now();
        if policy.check_recipient(request(i)).await.is_err() {
            eprintln!("a check failed");
            std::process::exit(1);
        }
        latencies.push(started.elapsed());
        i += 1;
    }
    latencies
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, callers, seconds] = args.as_slice() else {
        eprintln!("usage: policy-load <policy url> <callers> <seconds>");
        std::process::exit(64);
    };
    let (Ok(callers), Ok(seconds)) = (callers.parse::<usize>(), seconds.parse::<u64>()) else {
        eprintln!("callers and seconds are numbers");
        std::process::exit(64);
    };
    let channel = common::connect(url).await;
    let mut directory = DirectoryClient::new(channel.clone());
    let setup = async {
        directory
            .add_domain(AddDomainRequest {
                domain: "load.test".into(),
                ..Default::default()
            })
            .await?;
        directory
            .add_user(AddUserRequest {
                address: "known@load.test".into(),
                password: "load".into(),
            })
            .await
    };
    if let Err(e) = setup.await {
        eprintln!("setup failed: {e}");
        std::process::exit(1);
    }
    let policy = PolicyClient::new(channel);
    // Warm the caches (directory copy, DNS answers, connections).
    let _ = caller(policy.clone(), Instant::now() + Duration::from_secs(1), 0).await;
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..callers)
        .map(|n| tokio::spawn(caller(policy.clone(), until, n)))
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        match t.await {
            Ok(l) => all.extend(l),
            Err(e) => {
                eprintln!("a caller failed: {e}");
                std::process::exit(1);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{} checks from {callers} callers in {elapsed:.1} s: {:.0} checks/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        all.len(),
        all.len() as f64 / elapsed,
        ms(common::percentile(&all, 0.50)),
        ms(common::percentile(&all, 0.99)),
        ms(all.last().copied().unwrap_or_default()),
    );
}
