//! `queue-query`: latency of the Queue service's reads over a large history; prints p50/p99
//! of `GetMessage` and of filtered `ListMessages`.
//!
//! Usage: `queue-query <queue url> <messages stored> <requests> <callers>`. It first waits
//! until the service knows `messages` messages (its projection is loaded), then picks
//! queue ids from the list and runs `requests` calls of each kind from `callers`
//! concurrent callers sharing one channel.

#![forbid(unsafe_code)]

use mailflow_bench as common;

use std::time::{Duration, Instant};

use mailflow_proto::v1::{
    GetMessageRequest, ListMessagesRequest, MessageState, QueueSummaryRequest,
    queue_client::QueueClient,
};

fn report(name: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    println!(
        "{name}: {} calls, p50 {:.2} ms, p99 {:.2} ms",
        latencies.len(),
        common::percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
        common::percentile(&latencies, 0.99).as_secs_f64() * 1000.0
    );
}

/// Runs `requests` calls of `call` from `callers` tasks; returns each call's latency.
async fn measure<F, Fut>(requests: usize, callers: usize, call: F) -> Vec<Duration>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let mut tasks = Vec::new();
    for c in 0..callers {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = c;
            while i < requests {
                let started = Instant::now();
                if let Err(e) = call(i).await {
                    eprintln!("a call failed: {e}");
                    std::process::exit(1);
                }
                out.push(started.elapsed());
                i += callers;
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(requests);
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, messages, requests, callers] = args.as_slice() else {
        eprintln!("usage: queue-query <queue url> <messages stored> <requests> <callers>");
        std::process::exit(64);
    };
    let (messages, requests, callers): (u64, usize, usize) =
        match (messages.parse(), requests.parse(), callers.parse()) {
            (Ok(m), Ok(r), Ok(c)) => (m, r, c),
            _ => {
                eprintln!("messages, requests and callers are numbers");
                std::process::exit(64);
            }
        };
    let channel = common::connect(url).await;
    let client = QueueClient::new(channel);
    let started = Instant::now();
    loop {
        let known = client
            .clone()
            .queue_summary(QueueSummaryRequest {})
            .await
            .map(|r| r.into_inner().messages)
            .unwrap_or(0);
        if known >= messages {
            println!(
                "projection holds {known} messages ({:.1} s after the load)",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ids: Vec<String> = match client
        .clone()
        .list_messages(ListMessagesRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
    {
        Ok(page) => page
            .into_inner()
            .messages
            .into_iter()
            .map(|m| m.queue_id)
            .collect(),
        Err(e) => {
            eprintln!("list failed: {e}");
            std::process::exit(1);
        }
    };
    let ids = std::sync::Arc::new(ids);
    let c = client.clone();
    let get = measure(requests, callers, move |i| {
        let (mut c, ids) = (c.clone(), ids.clone());
        async move {
            let queue_id = ids[i.wrapping_mul(7919) % ids.len()].clone();
            c.get_message(GetMessageRequest {
                queue_id,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        }
    })
    .await;
    report("GetMessage", get);
    for (domain, name) in [
        (
            "remote.bench.test",
            "ListMessages(domain=remote.bench.test, state=delivered)",
        ),
        (
            "other.bench.test",
            "ListMessages(domain=other.bench.test, state=delivered)",
        ),
    ] {
        let c = client.clone();
        let list = measure(requests, callers, move |i| {
            let mut c = c.clone();
            async move {
                let page = c
                    .list_messages(ListMessagesRequest {
                        state: MessageState::Delivered as i32,
                        recipient_domain: domain.into(),
                        page_size: 50,
                        ..Default::default()
                    })
                    .await;
                match page {
                    Ok(p) if p.get_ref().messages.len() == 50 => Ok(()),
                    Ok(p) => Err(format!("call {i}: {} messages", p.get_ref().messages.len())),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await;
        report(name, list);
    }
}
