//! Redis Cluster and Sentinel: real topologies started by the tests (see `common::topology`).
//! The harness blocks its thread, so these tests run on a multi-thread runtime and call it
//! through `spawn_blocking` while the engine must keep running.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::once;
use common::topology::{Cluster, SentinelGroup};
use redis::AsyncCommands;
use sdl_engine::{
    AcquireOptions, ErrorKind, Locker, LockerOptions, ReplicaAck, SentinelConfig, ServerConfig,
    Topology,
};

fn cluster_locker(cluster: &Cluster) -> Locker {
    let nodes = cluster
        .nodes()
        .iter()
        .map(|node| ServerConfig::tcp("127.0.0.1", node.port))
        .collect();
    Locker::new(Topology::Cluster(nodes), LockerOptions::default()).unwrap()
}

async fn get(port: u16, key: &str) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    conn.get(key).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_locks_across_slots_with_fences_and_auto_extension() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(3, 0))
        .await
        .unwrap();
    let locker = cluster_locker(&cluster);

    // Many resources, hence many slots on all three masters; some with hash tags.
    let keys: Vec<String> = (0..40)
        .map(|i| {
            if i % 4 == 0 {
                format!("lock:{{tenant{i}}}:job")
            } else {
                format!("lock:order:{i}")
            }
        })
        .collect();
    let mut held = Vec::new();
    for key in &keys {
        let acquired = locker
            .acquire(
                key,
                AcquireOptions {
                    auto_extend: true,
                    ..once(600)
                },
                None,
            )
            .await
            .unwrap()
            .expect("free");
        assert!(acquired.fence.is_some_and(|f| f >= 1), "{key}");
        held.push((acquired.token, acquired.fence));
    }
    let masters: std::collections::HashSet<u16> =
        keys.iter().map(|k| cluster.master_for_key(k)).collect();
    assert_eq!(masters.len(), 3, "the keys spread over every master");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (key, (token, _)) in keys.iter().zip(&held) {
        let port = cluster.master_for_key(key);
        assert_eq!(
            get(port, key).await.as_deref(),
            Some(token.as_str()),
            "{key} kept alive"
        );
        assert!(locker.is_locked(key).await.unwrap());
        assert!(locker.release(key, token).await.unwrap());
    }
    assert_eq!(locker.tracked(), (0, 0));

    let second = locker
        .acquire(&keys[0], once(1000), None)
        .await
        .unwrap()
        .unwrap();
    assert!(second.fence > held[0].1, "fences increase per resource");
    // The counter lives beside the key, on its master, in its slot.
    let counter = sdl_engine::fence_key(&keys[0], "lock:");
    let on_master = get(cluster.master_for_key(&keys[0]), &counter).await;
    assert_eq!(on_master, second.fence.map(|f| f.to_string()));
    let err = locker
        .acquire(
            "lock:replicated",
            AcquireOptions {
                replicas: Some(ReplicaAck {
                    count: 1,
                    timeout: Duration::from_millis(100),
                }),
                ..once(1000)
            },
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_locks_keep_working_after_a_master_fails_over() {
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start(3, 1))
        .await
        .unwrap();
    let locker = Arc::new(cluster_locker(&cluster));
    let key = "lock:failover";
    let acquired = locker
        .acquire(key, once(30_000), None)
        .await
        .unwrap()
        .unwrap();
    let victim = cluster.master_for_key(key);
    // Replication is asynchronous; the test wants the case where the replica has the lock.
    let replica = cluster
        .nodes()
        .iter()
        .find(|node| node.master_port == Some(victim))
        .map(|node| node.port)
        .expect("every master has a replica");
    wait_until_replicated(replica, key, &acquired.token).await;

    cluster.kill_master(victim);
    // Calls during the failover either succeed or fail clearly, each within a bound.
    let during = {
        let locker = locker.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..10 {
                let started = Instant::now();
                let outcome = locker.is_locked(key).await;
                outcomes.push((started.elapsed(), outcome.map_err(|e| e.kind())));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            outcomes
        })
    };
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_for_failover(victim, Duration::from_secs(20));
        cluster
    })
    .await
    .unwrap();
    for (elapsed, outcome) in during.await.unwrap() {
        assert!(
            elapsed < Duration::from_secs(8),
            "a call took {elapsed:?}: {outcome:?}"
        );
    }

    // The replica took over the slot: the lock is there (replicated before the kill) and works.
    let deadline = Instant::now() + Duration::from_secs(10);
    let released = loop {
        match locker.release(key, &acquired.token).await {
            Ok(released) => break released,
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("no recovery after the failover: {}", err.message()),
        }
    };
    assert!(released, "the promoted replica had the lock");
    let again = locker
        .acquire(key, once(5000), None)
        .await
        .unwrap()
        .unwrap();
    assert!(again.fence.unwrap() >= 2);
    drop(cluster);
}

async fn wait_until_replicated(replica: u16, key: &str, token: &str) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{replica}/")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("READONLY").query_async(&mut conn).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let value: Option<String> = conn.get(key).await.unwrap();
        if value.as_deref() == Some(token) {
            return;
        }
        assert!(Instant::now() < deadline, "the replica never got {key}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sentinel_locker(group: &SentinelGroup) -> Locker {
    let sentinels = group
        .sentinel_addrs()
        .into_iter()
        .map(|(host, port)| ServerConfig::tcp(host, port))
        .collect();
    let topology = Topology::Sentinel(SentinelConfig {
        sentinels,
        master_name: group.master_name().to_owned(),
        master: ServerConfig::tcp("127.0.0.1", 1),
    });
    Locker::new(topology, LockerOptions::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_finds_the_master_and_follows_a_failover() {
    let group = tokio::task::spawn_blocking(|| SentinelGroup::start(1, 1))
        .await
        .unwrap();
    let locker = sentinel_locker(&group);
    // Replication is asynchronous: without WAIT a failover right after the SET may lose it.
    let replicated = AcquireOptions {
        replicas: Some(ReplicaAck {
            count: 1,
            timeout: Duration::from_secs(2),
        }),
        ..once(30_000)
    };
    let first = locker
        .acquire("lock:s", replicated, None)
        .await
        .unwrap()
        .unwrap();
    let old_master = group.master_port();
    assert_eq!(
        get(old_master, "lock:s").await.as_deref(),
        Some(first.token.as_str())
    );

    let (group, new_master) = tokio::task::spawn_blocking(move || {
        let new_master = group.failover(Duration::from_secs(20));
        (group, new_master)
    })
    .await
    .unwrap();
    assert_ne!(new_master, old_master);
    // The sentinels announce the switch (+switch-master) as they finish; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The lock was replicated: it is still held, on the new master, and the Lock follows it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let released = loop {
        match locker.release("lock:s", &first.token).await {
            Ok(released) => break released,
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("did not follow the failover: {}", err.message()),
        }
    };
    assert!(released);
    let second = locker
        .acquire("lock:s", once(30_000), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        get(new_master, "lock:s").await.as_deref(),
        Some(second.token.as_str())
    );
    drop(group);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_acknowledgement_is_required_when_asked() {
    let group = tokio::task::spawn_blocking(|| SentinelGroup::start(1, 1))
        .await
        .unwrap();
    let locker = sentinel_locker(&group);
    let with = |count, timeout_ms| AcquireOptions {
        replicas: Some(ReplicaAck {
            count,
            timeout: Duration::from_millis(timeout_ms),
        }),
        ..once(5000)
    };
    let acquired = locker
        .acquire("lock:ack", with(1, 3000), None)
        .await
        .unwrap()
        .unwrap();
    assert!(locker.release("lock:ack", &acquired.token).await.unwrap());

    let err = locker
        .acquire("lock:ack", with(2, 300), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Replication, "{}", err.message());
    assert!(
        err.message().contains("1 of 2 replicas"),
        "{}",
        err.message()
    );
    assert_eq!(
        get(group.master_port(), "lock:ack").await,
        None,
        "released again"
    );
    drop(group);
}
