//! `queue-drain`: watches a JetStream stream for the relay benchmark.
//!
//! `queue-drain count <nats url> <stream> <n>` waits until the stream holds at least `n`
//! messages; `queue-drain empty <nats url> <stream>` waits until it holds none and prints
//! how long that took.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// The stream's message count; `None` when it cannot be read just now.
async fn messages(js: &async_nats::jetstream::Context, stream: &str) -> Option<u64> {
    let mut s = js.get_stream(stream).await.ok()?;
    s.info().await.ok().map(|i| i.state.messages)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, url, stream, n) = match args.as_slice() {
        [_, mode, url, stream] => (mode.as_str(), url, stream, 0),
        [_, mode, url, stream, n] => (mode.as_str(), url, stream, n.parse().unwrap_or(0)),
        _ => {
            eprintln!("usage: queue-drain count|empty <nats url> <stream> [n]");
            std::process::exit(64);
        }
    };
    let client = match async_nats::connect(url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot connect to {url}: {e}");
            std::process::exit(1);
        }
    };
    let js = async_nats::jetstream::new(client);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    loop {
        let now = messages(&js, stream).await;
        let done = match (mode, now) {
            (_, None) => false,
            ("count", Some(m)) => m >= n,
            (_, Some(m)) => m == 0,
        };
        if done {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("{stream} still holds {now:?} messages after 600 s");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if mode == "empty" {
        println!("{:.3}", started.elapsed().as_secs_f64());
    }
}
