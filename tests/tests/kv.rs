//! Read-modify-write on a real JetStream KV bucket: the compare-and-set every stage relies
//! on when replicas write the same record.

#![allow(clippy::unwrap_used)]

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use mailflow_bus::compare_and_set;
use mailflow_tests::nats::Nats;

async fn bucket(nats: &Nats) -> kv::Store {
    let client = async_nats::connect(nats.url()).await.unwrap();
    jetstream::new(client)
        .create_key_value(kv::Config {
            bucket: "test".into(),
            history: 5,
            ..Default::default()
        })
        .await
        .unwrap()
}

fn number(v: Option<Bytes>) -> u32 {
    v.map_or(0, |b| std::str::from_utf8(&b).unwrap().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_all_count_and_none_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path()).await;
    let kv = bucket(&nats).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            compare_and_set(&kv, "count", 100, |v| {
                Ok(Some(Bytes::from((number(v) + 1).to_string())))
            })
            .await
            .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(number(kv.get("count").await.unwrap()), 20);
    compare_and_set(&kv, "count", 10, |_| Ok(None))
        .await
        .unwrap();
    assert_eq!(kv.get("count").await.unwrap(), None);
    // Deleting what is not there is done already.
    compare_and_set(&kv, "count", 10, |_| Ok(None))
        .await
        .unwrap();
}
