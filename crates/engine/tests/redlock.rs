//! Redlock over independent redis-server processes started on free ports.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{RedisServer, once};
use redis::AsyncCommands;
use sdl_engine::{
    AcquireOptions, ErrorKind, Locker, LockerOptions, RetryPolicy, ServerConfig, Topology,
};

fn masters(n: usize) -> Vec<RedisServer> {
    (0..n).map(|_| RedisServer::start()).collect()
}

fn redlock(servers: &[RedisServer]) -> Locker {
    let topology = Topology::Redlock(servers.iter().map(RedisServer::config).collect());
    Locker::new(topology, LockerOptions::default()).unwrap()
}

async fn value_on(server: &RedisServer, key: &str) -> Option<String> {
    server.inspect().await.get(key).await.unwrap()
}

#[tokio::test]
async fn acquires_on_every_master_and_excludes_a_second_owner() {
    let servers = masters(3);
    let locker = redlock(&servers);
    let acquired = locker
        .acquire("lock:r", once(5000), None)
        .await
        .unwrap()
        .unwrap();
    for server in &servers {
        assert_eq!(
            value_on(server, "lock:r").await.as_deref(),
            Some(acquired.token.as_str())
        );
    }
    assert_eq!(acquired.fence, Some(1));

    let other = redlock(&servers);
    assert_eq!(
        other.acquire("lock:r", once(5000), None).await.unwrap(),
        None
    );
    assert!(!other.release("lock:r", "not-the-token").await.unwrap());
    assert!(locker.is_locked("lock:r").await.unwrap());

    assert!(
        locker
            .extend("lock:r", &acquired.token, Duration::from_secs(30))
            .await
            .unwrap()
    );
    // extend answers once a majority agreed; the last master's answer may still be on its way.
    let mut extended = 0;
    for server in &servers {
        let pttl: i64 = server.inspect().await.pttl("lock:r").await.unwrap();
        extended += usize::from(pttl > 25_000);
    }
    assert!(extended >= 2, "{extended} masters extended");
    let started = Instant::now();
    loop {
        let pttl: i64 = servers[1].inspect().await.pttl("lock:r").await.unwrap();
        if pttl > 25_000 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{pttl}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert!(locker.release("lock:r", &acquired.token).await.unwrap());
    for server in &servers {
        assert_eq!(value_on(server, "lock:r").await, None);
    }
    assert!(!locker.is_locked("lock:r").await.unwrap());
}

#[tokio::test]
async fn a_lost_race_releases_the_minority_it_got() {
    let servers = masters(3);
    // Someone else holds the lock on two masters: a majority is impossible.
    for server in &servers[1..] {
        let _: () = server
            .inspect()
            .await
            .set("lock:split", "other")
            .await
            .unwrap();
    }
    let locker = redlock(&servers);
    assert_eq!(
        locker
            .acquire("lock:split", once(5000), None)
            .await
            .unwrap(),
        None
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        value_on(&servers[0], "lock:split").await,
        None,
        "released where it was granted"
    );
    assert_eq!(
        value_on(&servers[1], "lock:split").await.as_deref(),
        Some("other")
    );
}

#[tokio::test]
async fn one_master_down_of_three_still_acquires_releases_and_extends() {
    let mut servers = masters(3);
    servers[2].kill();
    let locker = redlock(&servers);
    let acquired = locker
        .acquire("lock:down1", once(5000), None)
        .await
        .unwrap()
        .unwrap();
    assert!(
        locker
            .extend("lock:down1", &acquired.token, Duration::from_secs(10))
            .await
            .unwrap()
    );
    assert!(locker.release("lock:down1", &acquired.token).await.unwrap());
}

#[tokio::test]
async fn a_majority_down_fails_with_a_quorum_error_naming_the_nodes() {
    let mut servers = masters(3);
    let down: Vec<String> = servers[1..]
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    servers[1].kill();
    servers[2].kill();
    let locker = redlock(&servers);
    let started = Instant::now();
    let err = locker
        .acquire("lock:down2", once(5000), None)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(err.kind(), ErrorKind::Quorum, "{}", err.message());
    assert_eq!(err.code(), "ERR_LOCK_QUORUM");
    for node in &down {
        assert!(err.message().contains(node.as_str()), "{}", err.message());
    }
    assert!(
        !err.message().contains(&format!(":{} (", servers[0].port)),
        "{}",
        err.message()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        value_on(&servers[0], "lock:down2").await,
        None,
        "the lone grant was released"
    );
}

#[tokio::test]
async fn five_masters_tolerate_two_down_but_not_three() {
    let mut servers = masters(5);
    servers[0].kill();
    servers[1].kill();
    let locker = redlock(&servers);
    let acquired = locker
        .acquire("lock:five", once(5000), None)
        .await
        .unwrap()
        .unwrap();
    assert!(locker.release("lock:five", &acquired.token).await.unwrap());
    servers[2].kill();
    let err = locker
        .acquire("lock:five", once(5000), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Quorum);
}

#[tokio::test]
async fn a_stopped_master_does_not_hold_up_the_others() {
    let servers = masters(3);
    // A long reply timeout: waiting for the stopped master would take at least 3 s.
    let configs = servers
        .iter()
        .map(|s| ServerConfig {
            command_timeout: Duration::from_secs(3),
            ..s.config()
        })
        .collect();
    let locker = Locker::new(Topology::Redlock(configs), LockerOptions::default()).unwrap();
    // Open the connections first, so the stop hits an established one (the hard case).
    assert!(!locker.is_locked("lock:warm").await.unwrap());
    let stopped = servers[0].pid();
    signal(stopped, "STOP");
    let started = Instant::now();
    let acquired = locker.acquire("lock:slow", once(10_000), None).await;
    let elapsed = started.elapsed();
    signal(stopped, "CONT");
    let acquired = acquired.unwrap().expect("two of three masters granted it");
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    assert!(locker.release("lock:slow", &acquired.token).await.unwrap());
}

#[tokio::test]
async fn auto_extension_keeps_a_redlock_lease_with_one_master_down() {
    let mut servers = masters(3);
    let (lost_tx, lost) = std::sync::mpsc::channel();
    let options = LockerOptions {
        on_lost: Some(Arc::new(move |l| {
            let _ = lost_tx.send(l);
        })),
        ..LockerOptions::default()
    };
    let topology = Topology::Redlock(servers.iter().map(RedisServer::config).collect());
    let locker = Locker::new(topology, options).unwrap();
    let opts = AcquireOptions {
        auto_extend: true,
        ..once(600)
    };
    let acquired = locker
        .acquire("lock:ext", opts, None)
        .await
        .unwrap()
        .unwrap();
    servers[0].kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(lost.try_recv().is_err(), "a majority still extends it");
    assert_eq!(
        value_on(&servers[1], "lock:ext").await.as_deref(),
        Some(acquired.token.as_str())
    );
    servers[1].kill();
    let deadline = Instant::now() + Duration::from_secs(3);
    let lost_lease = loop {
        if let Ok(lease) = lost.try_recv() {
            break lease;
        }
        assert!(Instant::now() < deadline, "lost without a majority");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lost_lease.token, acquired.token);
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contending_lockers_never_overlap() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let servers = masters(3);
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let sections = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let locker = Arc::new(redlock(&servers));
        let (inside, overlaps, sections) = (inside.clone(), overlaps.clone(), sections.clone());
        workers.push(tokio::spawn(async move {
            let options = AcquireOptions {
                retry: RetryPolicy {
                    retry_count: None,
                    retry_delay: Duration::from_millis(5),
                    ..RetryPolicy::ONCE
                },
                ..once(10_000)
            };
            for _ in 0..40 {
                let acquired = locker
                    .acquire("lock:contended", options, None)
                    .await
                    .unwrap()
                    .unwrap();
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                sections.fetch_add(1, Ordering::SeqCst);
                assert!(
                    locker
                        .release("lock:contended", &acquired.token)
                        .await
                        .unwrap()
                );
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
    assert_eq!(sections.load(Ordering::SeqCst), 160);
}
