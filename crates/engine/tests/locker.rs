//! The engine against real redis-server processes started on free ports.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{RedisServer, free_port};
use redis::AsyncCommands;
use sdl_engine::{
    AcquireOptions, ErrorKind, Locker, LostLease, LostReason, RetryPolicy, ServerConfig,
};

fn once(ttl_ms: u64) -> AcquireOptions {
    AcquireOptions {
        ttl: Duration::from_millis(ttl_ms),
        retry: RetryPolicy::ONCE,
        auto_extend: false,
    }
}

fn retrying(ttl_ms: u64, count: Option<u64>, delay_ms: u64) -> AcquireOptions {
    AcquireOptions {
        retry: RetryPolicy {
            retry_count: count,
            retry_delay: Duration::from_millis(delay_ms),
        },
        ..once(ttl_ms)
    }
}

fn auto_extended(ttl_ms: u64) -> AcquireOptions {
    AcquireOptions {
        auto_extend: true,
        ..once(ttl_ms)
    }
}

fn collect_lost() -> (Arc<Mutex<Vec<LostLease>>>, sdl_engine::LostCallback) {
    let lost = Arc::new(Mutex::new(Vec::new()));
    let sink = lost.clone();
    (lost, Arc::new(move |l| sink.lock().unwrap().push(l)))
}

#[tokio::test]
async fn acquire_sets_the_token_with_px_ttl_and_nx() {
    let server = RedisServer::start();
    let locker = Locker::new(server.config(), None).unwrap();
    let mut redis = server.inspect().await;

    let token = locker.acquire("lock:a", once(5000)).await.unwrap().unwrap();
    assert_eq!(token.len(), 32);
    let stored: String = redis.get("lock:a").await.unwrap();
    assert_eq!(stored, token);
    let pttl: i64 = redis.pttl("lock:a").await.unwrap();
    assert!((4000..=5000).contains(&pttl), "pttl {pttl}");

    assert_eq!(locker.acquire("lock:a", once(5000)).await.unwrap(), None);
    let still: String = redis.get("lock:a").await.unwrap();
    assert_eq!(still, token, "a failed acquire must not touch the key");
}

#[tokio::test]
async fn release_and_extend_only_work_for_the_owner() {
    let server = RedisServer::start();
    let locker = Locker::new(server.config(), None).unwrap();
    let mut redis = server.inspect().await;
    let token = locker.acquire("lock:b", once(5000)).await.unwrap().unwrap();

    assert!(!locker.release("lock:b", "not-the-token").await.unwrap());
    assert!(
        !locker
            .extend("lock:b", "not-the-token", Duration::from_secs(60))
            .await
            .unwrap()
    );
    let pttl: i64 = redis.pttl("lock:b").await.unwrap();
    assert!(
        pttl <= 5000,
        "a foreign extend must not change the ttl: {pttl}"
    );

    assert!(
        locker
            .extend("lock:b", &token, Duration::from_secs(60))
            .await
            .unwrap()
    );
    let pttl: i64 = redis.pttl("lock:b").await.unwrap();
    assert!((59_000..=60_000).contains(&pttl), "pttl {pttl}");

    assert!(locker.release("lock:b", &token).await.unwrap());
    assert!(!locker.is_locked("lock:b").await.unwrap());
    assert!(
        !locker.release("lock:b", &token).await.unwrap(),
        "second release"
    );
    assert!(
        !locker
            .extend("lock:b", &token, Duration::from_secs(1))
            .await
            .unwrap(),
        "extend must not re-create a released lock"
    );
    let exists: bool = redis.exists("lock:b").await.unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn retries_until_the_holder_releases() {
    let server = RedisServer::start();
    let locker = Arc::new(Locker::new(server.config(), None).unwrap());
    let first = locker
        .acquire("lock:c", once(10_000))
        .await
        .unwrap()
        .unwrap();

    let waiter = {
        let locker = locker.clone();
        tokio::spawn(async move {
            locker
                .acquire("lock:c", retrying(10_000, Some(100), 20))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(locker.release("lock:c", &first).await.unwrap());
    let second = waiter
        .await
        .unwrap()
        .unwrap()
        .expect("the waiter gets the lock");
    assert_ne!(first, second);
}

#[tokio::test]
async fn retry_count_n_means_one_plus_n_attempts() {
    let server = RedisServer::start();
    let locker = Locker::new(server.config(), None).unwrap();
    locker
        .acquire("lock:d", once(10_000))
        .await
        .unwrap()
        .unwrap();
    let mut redis = server.inspect().await;
    let before = set_calls(&mut redis).await;

    let started = Instant::now();
    let got = locker
        .acquire("lock:d", retrying(10_000, Some(3), 40))
        .await
        .unwrap();
    assert_eq!(got, None);
    assert!(
        started.elapsed() >= Duration::from_millis(120),
        "three delays of 40 ms"
    );
    assert_eq!(set_calls(&mut redis).await - before, 4);
}

async fn set_calls(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .unwrap();
    info.lines()
        .find(|l| l.starts_with("cmdstat_set:"))
        .and_then(|l| l.split(['=', ',']).nth(1))
        .map(|n| n.parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test]
async fn auto_extend_keeps_the_lock_past_its_ttl_until_release() {
    let server = RedisServer::start();
    let (lost, on_lost) = collect_lost();
    let locker = Locker::new(server.config(), Some(on_lost)).unwrap();
    let mut redis = server.inspect().await;

    let token = locker
        .acquire("lock:e", auto_extended(300))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let stored: Option<String> = redis.get("lock:e").await.unwrap();
    assert_eq!(
        stored.as_deref(),
        Some(token.as_str()),
        "still held after 3 ttls"
    );
    assert_eq!(locker.auto_extended(), 1);

    assert!(locker.release("lock:e", &token).await.unwrap());
    assert_eq!(locker.auto_extended(), 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let exists: bool = redis.exists("lock:e").await.unwrap();
    assert!(!exists, "no extend may re-create a released lock");
    assert!(lost.lock().unwrap().is_empty());
}

#[tokio::test]
async fn auto_extend_stops_when_another_owner_holds_the_key() {
    let server = RedisServer::start();
    let (lost, on_lost) = collect_lost();
    let locker = Locker::new(server.config(), Some(on_lost)).unwrap();
    let mut redis = server.inspect().await;

    let token = locker
        .acquire("lock:f", auto_extended(400))
        .await
        .unwrap()
        .unwrap();
    let _: () = redis.set("lock:f", "someone-else").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;

    let lost = lost.lock().unwrap().clone();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].token, token);
    assert_eq!(lost[0].key, "lock:f");
    assert_eq!(lost[0].reason, LostReason::NotOwner);
    assert_eq!(locker.auto_extended(), 0);
    let value: String = redis.get("lock:f").await.unwrap();
    assert_eq!(value, "someone-else");
    let pttl: i64 = redis.pttl("lock:f").await.unwrap();
    assert_eq!(pttl, -1, "the other owner's key keeps its own (no) expiry");
}

#[tokio::test]
async fn many_auto_extended_locks_all_survive() {
    let server = RedisServer::start();
    let (lost, on_lost) = collect_lost();
    let locker = Arc::new(Locker::new(server.config(), Some(on_lost)).unwrap());
    let mut tasks = Vec::new();
    for i in 0..2000 {
        let locker = locker.clone();
        tasks.push(tokio::spawn(async move {
            locker
                .acquire(&format!("lock:many:{i}"), auto_extended(400))
                .await
        }));
    }
    for task in tasks {
        task.await
            .unwrap()
            .unwrap()
            .expect("distinct keys are free");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut redis = server.inspect().await;
    let keys: Vec<String> = redis.keys("lock:many:*").await.unwrap();
    assert_eq!(keys.len(), 2000);
    assert!(lost.lock().unwrap().is_empty());
    assert_eq!(locker.auto_extended(), 2000);
}

#[tokio::test]
async fn a_refused_port_fails_fast_with_a_connection_error() {
    let config = ServerConfig::tcp("127.0.0.1", free_port());
    let locker = Locker::new(config, None).unwrap();
    let started = Instant::now();
    let err = locker.acquire("lock:g", once(1000)).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.kind(), ErrorKind::Connection);
    assert!(
        err.message().contains("connection refused"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_silent_server_times_out_within_the_connect_timeout() {
    // A listener that accepts and never answers, like a hung server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut config = ServerConfig::tcp("127.0.0.1", port);
    config.connect_timeout = Duration::from_millis(300);
    let locker = Locker::new(config, None).unwrap();
    let started = Instant::now();
    let err = locker.is_locked("lock:h").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.kind(), ErrorKind::Connection);
    assert!(
        err.message().contains("no answer within 300 ms"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_without_the_password() {
    let server = RedisServer::start_with(&["--requirepass", "right-password"]);
    let mut config = server.config();
    config.password = Some("wrong-pa55word".into());
    let locker = Locker::new(config, None).unwrap();
    let err = locker.acquire("lock:i", once(1000)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{}", err.message());
    assert!(
        !err.message().contains("wrong-pa55word"),
        "{}",
        err.message()
    );
    assert!(
        !err.message().contains("right-password"),
        "{}",
        err.message()
    );

    let mut config = server.config();
    config.password = Some("right-password".into());
    let locker = Locker::new(config, None).unwrap();
    assert!(
        locker
            .acquire("lock:i", once(1000))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn works_again_after_the_server_is_killed_and_restarted() {
    let mut server = RedisServer::start();
    let (lost, on_lost) = collect_lost();
    let locker = Locker::new(server.config(), Some(on_lost)).unwrap();
    let token = locker
        .acquire("lock:j", auto_extended(600))
        .await
        .unwrap()
        .unwrap();

    server.kill();
    let err = locker.is_locked("lock:j").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{}", err.message());
    server.restart();

    // The restarted server lost the key: the next extend finds no key and gives the lease up.
    let deadline = Instant::now() + Duration::from_secs(5);
    while locker.auto_extended() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(locker.auto_extended(), 0);
    let lost = lost.lock().unwrap().clone();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].token, token);

    let again = locker.acquire("lock:j", once(1000)).await.unwrap();
    assert!(again.is_some(), "the Locker works after the restart");
    assert!(
        locker.release("lock:j", &again.unwrap()).await.unwrap(),
        "scripts reload after NOSCRIPT"
    );
}

#[tokio::test]
async fn an_unreachable_server_loses_the_lease_at_its_deadline() {
    let mut server = RedisServer::start();
    let (lost, on_lost) = collect_lost();
    let locker = Locker::new(server.config(), Some(on_lost)).unwrap();
    let token = locker
        .acquire("lock:k", auto_extended(500))
        .await
        .unwrap()
        .unwrap();
    let killed_at = Instant::now();
    server.kill();

    let deadline = Instant::now() + Duration::from_secs(5);
    while lost.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lost = lost.lock().unwrap().clone();
    assert_eq!(lost.len(), 1, "lost within the ttl plus a margin");
    assert_eq!(lost[0].token, token);
    assert!(
        matches!(lost[0].reason, LostReason::Unreachable(_)),
        "{:?}",
        lost[0].reason
    );
    assert!(killed_at.elapsed() < Duration::from_millis(500 + 1500));
}

#[tokio::test]
async fn close_rejects_waiting_and_later_calls() {
    let server = RedisServer::start();
    let locker = Arc::new(Locker::new(server.config(), None).unwrap());
    locker
        .acquire("lock:l", once(10_000))
        .await
        .unwrap()
        .unwrap();
    let waiter = {
        let locker = locker.clone();
        tokio::spawn(async move { locker.acquire("lock:l", retrying(10_000, None, 50)).await })
    };
    tokio::time::sleep(Duration::from_millis(120)).await;
    locker.close();
    let err = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("close wakes a forever-retrying acquire")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
    assert_eq!(
        locker.is_locked("lock:l").await.unwrap_err().kind(),
        ErrorKind::Closed
    );
}

#[tokio::test]
async fn honours_the_database_number() {
    let server = RedisServer::start();
    let mut config = server.config();
    config.db = 3;
    let locker = Locker::new(config, None).unwrap();
    let token = locker.acquire("lock:m", once(5000)).await.unwrap().unwrap();
    let mut redis = server.inspect().await;
    let in_db0: bool = redis.exists("lock:m").await.unwrap();
    assert!(!in_db0);
    let _: () = redis::cmd("SELECT")
        .arg(3)
        .query_async(&mut redis)
        .await
        .unwrap();
    let stored: String = redis.get("lock:m").await.unwrap();
    assert_eq!(stored, token);
}
