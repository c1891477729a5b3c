//! The engine against real redis-server processes started on free ports.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{RedisServer, free_port, once};
use redis::AsyncCommands;
use sdl_engine::{
    AcquireOptions, ErrorKind, Locker, LockerOptions, LostLease, LostReason, RetryPolicy,
    ServerConfig,
};

fn with_lost(on_lost: sdl_engine::LostCallback) -> LockerOptions {
    LockerOptions {
        on_lost: Some(on_lost),
        ..LockerOptions::default()
    }
}

/// Acquires and returns the token, or `None`.
async fn take(locker: &Locker, key: &str, options: AcquireOptions) -> Option<String> {
    locker
        .acquire(key, options, None)
        .await
        .unwrap()
        .map(|acquired| acquired.token)
}

fn retrying(ttl_ms: u64, count: Option<u64>, delay_ms: u64) -> AcquireOptions {
    AcquireOptions {
        retry: RetryPolicy {
            retry_count: count,
            retry_delay: Duration::from_millis(delay_ms),
            ..RetryPolicy::ONCE
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
    let locker = Locker::new(server.config(), LockerOptions::default()).unwrap();
    let mut redis = server.inspect().await;

    let token = take(&locker, "lock:a", once(5000)).await.unwrap();
    assert_eq!(token.len(), 32);
    let stored: String = redis.get("lock:a").await.unwrap();
    assert_eq!(stored, token);
    let pttl: i64 = redis.pttl("lock:a").await.unwrap();
    assert!((4000..=5000).contains(&pttl), "pttl {pttl}");

    assert_eq!(take(&locker, "lock:a", once(5000)).await, None);
    let still: String = redis.get("lock:a").await.unwrap();
    assert_eq!(still, token, "a failed acquire must not touch the key");
}

#[tokio::test]
async fn release_and_extend_only_work_for_the_owner() {
    let server = RedisServer::start();
    let locker = Locker::new(server.config(), LockerOptions::default()).unwrap();
    let mut redis = server.inspect().await;
    let token = take(&locker, "lock:b", once(5000)).await.unwrap();

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
    let locker = Arc::new(Locker::new(server.config(), LockerOptions::default()).unwrap());
    let first = take(&locker, "lock:c", once(10_000)).await.unwrap();

    let waiter = {
        let locker = locker.clone();
        tokio::spawn(async move { take(&locker, "lock:c", retrying(10_000, Some(100), 20)).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(locker.release("lock:c", &first).await.unwrap());
    let second = waiter.await.unwrap().expect("the waiter gets the lock");
    assert_ne!(first, second);
}

#[tokio::test]
async fn retry_count_n_polls_n_more_times_retry_delay_apart() {
    let server = RedisServer::start();
    let locker = Locker::new(server.config(), LockerOptions::default()).unwrap();
    take(&locker, "lock:d", once(10_000)).await.unwrap();
    let mut redis = server.inspect().await;
    let before = set_calls(&mut redis).await;

    let started = Instant::now();
    let got = take(&locker, "lock:d", retrying(10_000, Some(3), 100)).await;
    let elapsed = started.elapsed();
    assert_eq!(got, None);
    assert!(
        elapsed >= Duration::from_millis(300),
        "three delays: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    // 1 + 3 polls, plus at most one free attempt when the release channel's subscription starts.
    let attempts = set_calls(&mut redis).await - before;
    assert!((4..=5).contains(&attempts), "{attempts} attempts");
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
    let locker = Locker::new(server.config(), with_lost(on_lost)).unwrap();
    let mut redis = server.inspect().await;

    let token = take(&locker, "lock:e", auto_extended(300)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let stored: Option<String> = redis.get("lock:e").await.unwrap();
    assert_eq!(
        stored.as_deref(),
        Some(token.as_str()),
        "still held after 3 ttls"
    );
    assert_eq!(locker.tracked().1, 1);

    assert!(locker.release("lock:e", &token).await.unwrap());
    assert_eq!(locker.tracked().1, 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let exists: bool = redis.exists("lock:e").await.unwrap();
    assert!(!exists, "no extend may re-create a released lock");
    assert!(lost.lock().unwrap().is_empty());
}

#[tokio::test]
async fn auto_extend_stops_when_another_owner_holds_the_key() {
    let server = RedisServer::start();
    let (lost, on_lost) = collect_lost();
    let locker = Locker::new(server.config(), with_lost(on_lost)).unwrap();
    let mut redis = server.inspect().await;

    let token = take(&locker, "lock:f", auto_extended(400)).await.unwrap();
    let _: () = redis.set("lock:f", "someone-else").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;

    let lost = lost.lock().unwrap().clone();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].token, token);
    assert_eq!(lost[0].key, "lock:f");
    assert_eq!(lost[0].reason, LostReason::NotOwner);
    assert_eq!(locker.tracked().1, 0);
    let value: String = redis.get("lock:f").await.unwrap();
    assert_eq!(value, "someone-else");
    let pttl: i64 = redis.pttl("lock:f").await.unwrap();
    assert_eq!(pttl, -1, "the other owner's key keeps its own (no) expiry");
}

#[tokio::test]
async fn many_auto_extended_locks_all_survive() {
    let server = RedisServer::start();
    let (lost, on_lost) = collect_lost();
    let locker = Arc::new(Locker::new(server.config(), with_lost(on_lost)).unwrap());
    let mut tasks = Vec::new();
    for i in 0..2000 {
        let locker = locker.clone();
        tasks.push(tokio::spawn(async move {
            take(&locker, &format!("lock:many:{i}"), auto_extended(2000)).await
        }));
    }
    for task in tasks {
        task.await.unwrap().expect("distinct keys are free");
    }
    // Past the ttl: every key is alive only if its extends went through.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let mut redis = server.inspect().await;
    let lost = lost.lock().unwrap().clone();
    assert!(
        lost.is_empty(),
        "{} lost, first: {:?}",
        lost.len(),
        lost.first()
    );
    let keys: Vec<String> = redis.keys("lock:many:*").await.unwrap();
    assert_eq!(keys.len(), 2000);
    assert_eq!(locker.tracked().1, 2000);
}

#[tokio::test]
async fn a_refused_port_fails_fast_with_a_connection_error() {
    let config = ServerConfig::tcp("127.0.0.1", free_port());
    let locker = Locker::new(config, LockerOptions::default()).unwrap();
    let started = Instant::now();
    let err = locker
        .acquire("lock:g", once(1000), None)
        .await
        .unwrap_err();
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
    let locker = Locker::new(config, LockerOptions::default()).unwrap();
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
    let locker = Locker::new(config, LockerOptions::default()).unwrap();
    let err = locker
        .acquire("lock:i", once(1000), None)
        .await
        .unwrap_err();
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
    let locker = Locker::new(config, LockerOptions::default()).unwrap();
    assert!(take(&locker, "lock:i", once(1000)).await.is_some());
}

#[tokio::test]
async fn works_again_after_the_server_is_killed_and_restarted() {
    let mut server = RedisServer::start();
    let (lost, on_lost) = collect_lost();
    let locker = Locker::new(server.config(), with_lost(on_lost)).unwrap();
    let token = take(&locker, "lock:j", auto_extended(600)).await.unwrap();

    server.kill();
    let err = locker.is_locked("lock:j").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{}", err.message());
    server.restart();

    // The restarted server lost the key: the next extend finds no key and gives the lease up.
    let deadline = Instant::now() + Duration::from_secs(5);
    while locker.tracked().1 > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(locker.tracked().1, 0);
    let lost = lost.lock().unwrap().clone();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].token, token);

    let again = take(&locker, "lock:j", once(1000)).await;
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
    let locker = Locker::new(server.config(), with_lost(on_lost)).unwrap();
    let token = take(&locker, "lock:k", auto_extended(500)).await.unwrap();
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
    let locker = Arc::new(Locker::new(server.config(), LockerOptions::default()).unwrap());
    take(&locker, "lock:l", once(10_000)).await.unwrap();
    let waiter = {
        let locker = locker.clone();
        tokio::spawn(async move {
            locker
                .acquire("lock:l", retrying(10_000, None, 50), None)
                .await
        })
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
    let locker = Locker::new(config, LockerOptions::default()).unwrap();
    let token = take(&locker, "lock:m", once(5000)).await.unwrap();
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

fn watched(ttl_ms: u64) -> AcquireOptions {
    AcquireOptions {
        watch: true,
        ..once(ttl_ms)
    }
}

#[tokio::test]
async fn fences_strictly_increase_and_survive_the_key_expiring() {
    let server = RedisServer::start();
    let locker = Locker::new(server.config(), LockerOptions::default()).unwrap();
    let mut last = 0;
    for round in 0..5 {
        let acquired = locker
            .acquire("lock:fence", once(50), None)
            .await
            .unwrap()
            .unwrap();
        let fence = acquired.fence.expect("fencing is on by default");
        assert!(fence > last, "round {round}: {fence} after {last}");
        last = fence;
        if round % 2 == 0 {
            assert!(locker.release("lock:fence", &acquired.token).await.unwrap());
        } else {
            tokio::time::sleep(Duration::from_millis(80)).await; // let the key expire
        }
    }
    let mut redis = server.inspect().await;
    let counter_key = sdl_engine::fence_key("lock:fence", "lock:");
    let counter: i64 = redis.get(&counter_key).await.unwrap();
    assert_eq!(counter, last);
    let counter_ttl: i64 = redis.pttl(&counter_key).await.unwrap();
    assert_eq!(counter_ttl, -1, "the slot's counter is kept (one per slot)");

    let braces = locker
        .acquire("lock:{user:1}:cart", once(1000), None)
        .await
        .unwrap()
        .unwrap();
    let tagged: i64 = redis
        .get(sdl_engine::fence_key("lock:{user:1}:cart", "lock:"))
        .await
        .unwrap();
    assert_eq!(Some(tagged), braces.fence);

    let held = locker
        .acquire("lock:fence", once(5000), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        locker
            .acquire("lock:fence", once(5000), None)
            .await
            .unwrap(),
        None
    );
    let counter: i64 = redis.get(&counter_key).await.unwrap();
    assert_eq!(Some(counter), held.fence, "a failed attempt does not count");
}

#[tokio::test]
async fn without_fencing_no_counter_is_kept() {
    let server = RedisServer::start();
    let options = LockerOptions {
        fencing: false,
        ..LockerOptions::default()
    };
    let locker = Locker::new(server.config(), options).unwrap();
    let acquired = locker
        .acquire("lock:nofence", once(1000), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(acquired.fence, None);
    let mut redis = server.inspect().await;
    let keys: Vec<String> = redis.keys("*").await.unwrap();
    assert_eq!(keys, vec!["lock:nofence".to_string()]);
}

#[tokio::test]
async fn a_release_wakes_a_waiter_long_before_its_retry_delay() {
    let server = RedisServer::start();
    let holder = Locker::new(server.config(), LockerOptions::default()).unwrap();
    let waiter = Locker::new(server.config(), LockerOptions::default()).unwrap();
    let token = take(&holder, "lock:wake", once(30_000)).await.unwrap();
    let releaser = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(holder.release("lock:wake", &token).await.unwrap());
        Instant::now()
    };
    let acquiring = async {
        let got = take(&waiter, "lock:wake", retrying(30_000, None, 10_000)).await;
        (got, Instant::now())
    };
    let (released_at, (got, acquired_at)) = tokio::join!(releaser, acquiring);
    assert!(got.is_some());
    let handover = acquired_at.duration_since(released_at);
    assert!(
        handover < Duration::from_secs(2),
        "retry_delay is 10 s, took {handover:?}"
    );
}

#[tokio::test]
async fn a_lock_freed_without_notification_is_taken_by_polling() {
    let server = RedisServer::start();
    let waiter = Locker::new(server.config(), LockerOptions::default()).unwrap();
    let mut redis = server.inspect().await;
    let _: () = redis.set("lock:v1-held", "v1-token").await.unwrap();
    let freer = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _: () = redis.del("lock:v1-held").await.unwrap(); // as v1's release does: no publish
    };
    let (_, got) = tokio::join!(
        freer,
        take(&waiter, "lock:v1-held", retrying(5000, Some(50), 50))
    );
    assert!(got.is_some());
}

#[tokio::test]
async fn wait_timeout_gives_up_after_that_long() {
    let server = RedisServer::start();
    let locker = Locker::new(server.config(), LockerOptions::default()).unwrap();
    take(&locker, "lock:wt", once(30_000)).await.unwrap();
    let mut options = retrying(1000, None, 50);
    options.retry.wait_timeout = Some(Duration::from_millis(400));
    let started = Instant::now();
    assert_eq!(take(&locker, "lock:wt", options).await, None);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1400), "{elapsed:?}");
}

#[tokio::test]
async fn a_cancelled_wait_stops_at_once() {
    let server = RedisServer::start();
    let locker = Locker::new(server.config(), LockerOptions::default()).unwrap();
    take(&locker, "lock:cancel", once(30_000)).await.unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let trigger = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        cancel.cancel();
        Instant::now()
    };
    let (cancelled_at, result) = tokio::join!(
        trigger,
        locker.acquire("lock:cancel", retrying(1000, None, 10_000), Some(&cancel))
    );
    assert_eq!(result.unwrap_err().kind(), ErrorKind::Cancelled);
    assert!(cancelled_at.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn a_watched_lease_is_lost_at_its_deadline_and_extend_moves_it() {
    let server = RedisServer::start();
    let (lost, on_lost) = collect_lost();
    let locker = Locker::new(server.config(), with_lost(on_lost)).unwrap();
    let acquired = locker
        .acquire("lock:watch", watched(400), None)
        .await
        .unwrap()
        .unwrap();
    let first_deadline = locker.deadline(&acquired.token).unwrap();
    assert_eq!(first_deadline, acquired.deadline);
    let margin =
        sdl_engine::safety_margin(Duration::from_millis(400), sdl_engine::DEFAULT_DRIFT_FACTOR);
    assert_eq!(margin, Duration::from_millis(6));

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        locker
            .extend("lock:watch", &acquired.token, Duration::from_millis(400))
            .await
            .unwrap()
    );
    let moved = locker.deadline(&acquired.token).unwrap();
    assert!(moved >= first_deadline + Duration::from_millis(150));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        lost.lock().unwrap().is_empty(),
        "the extend moved the deadline"
    );

    tokio::time::sleep(Duration::from_millis(400)).await;
    let lost = lost.lock().unwrap().clone();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].reason, LostReason::Expired);
    assert!(!lost[0].auto_extended);
    assert_eq!(locker.deadline(&acquired.token), None);
}

#[tokio::test]
async fn max_hold_stops_auto_extension_and_the_lease_is_lost_at_its_deadline() {
    let server = RedisServer::start();
    let (lost, on_lost) = collect_lost();
    let locker = Locker::new(server.config(), with_lost(on_lost)).unwrap();
    let started = Instant::now();
    let options = AcquireOptions {
        auto_extend: true,
        max_hold: Some(Duration::from_millis(750)),
        ..once(500)
    };
    let token = take(&locker, "lock:max-hold", options).await.unwrap();
    let mut redis = server.inspect().await;
    loop {
        let held: Option<String> = redis.get("lock:max-hold").await.unwrap();
        if held.is_none() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gone = started.elapsed();
    assert!(
        gone >= Duration::from_millis(750) && gone < Duration::from_millis(750 + 500 + 400),
        "extended past its ttl, then not past maxHoldTime + ttl: gone after {gone:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while lost.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lost = lost.lock().unwrap().clone();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].token, token);
    assert_eq!(lost[0].reason, LostReason::MaxHoldTime);
    assert!(lost[0].auto_extended);
}

#[tokio::test]
async fn a_shorter_extend_moves_the_deadline_earlier() {
    let server = RedisServer::start();
    let (lost, on_lost) = collect_lost();
    let locker = Locker::new(server.config(), with_lost(on_lost)).unwrap();
    let acquired = locker
        .acquire("lock:shorter", watched(10_000), None)
        .await
        .unwrap()
        .unwrap();
    assert!(acquired.time_left() > Duration::from_secs(9));
    assert!(
        locker
            .extend("lock:shorter", &acquired.token, Duration::from_millis(300))
            .await
            .unwrap()
    );
    let left = locker.time_left(&acquired.token).unwrap();
    assert!(
        left <= Duration::from_millis(300),
        "{left:?}: PEXPIRE set a shorter TTL"
    );
    // And the loss is reported at that deadline, not at the first one.
    let deadline = Instant::now() + Duration::from_secs(3);
    while lost.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        lost.lock().unwrap().len(),
        1,
        "lost at the shorter deadline"
    );
}
