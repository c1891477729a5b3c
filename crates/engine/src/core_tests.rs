//! The core without a network: a fake clock, sockets that are only epochs, and scripted bytes
//! as the server's side. What a test reads of the output is decoded with the same decoder.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use redis::Value;

use super::*;
use crate::proto::resp::Decoder;

const SHA_LEN: usize = 40;

struct Harness {
    core: Core,
    now: Instant,
    epochs: Vec<Option<u64>>,
    /// Per connection, the replies owed, in order: `true` for a SCRIPT LOAD.
    owed: Vec<std::collections::VecDeque<bool>>,
}

fn config(port: u16) -> ServerConfig {
    ServerConfig::tcp("127.0.0.1", port)
}

impl Harness {
    fn new(topology: Topology) -> Self {
        let now = Instant::now();
        Self {
            core: Core::new(&topology, Some(String::new()), 0.01, now).unwrap(),
            now,
            epochs: Vec::new(),
            owed: Vec::new(),
        }
    }

    fn single() -> Self {
        Self::new(Topology::Single(config(6379)))
    }

    fn redlock(n: u16) -> Self {
        Self::new(Topology::Redlock(
            (0..n).map(|i| config(7000 + i)).collect(),
        ))
    }

    fn advance(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        self.core.on_timer(self.now);
    }

    /// Opens a socket for every connection without one, at once.
    fn open_all(&mut self) {
        for conn in 0..self.core.conn_count() {
            self.epochs.resize(self.core.conn_count(), None);
            if self.core.live_epoch(conn).is_none() {
                let epoch = self.core.opening(conn, self.now);
                assert!(self.core.opened(conn, epoch, self.now));
                self.epochs[conn] = Some(epoch);
            }
        }
    }

    fn epoch(&self, conn: usize) -> u64 {
        self.epochs[conn].unwrap()
    }

    /// The commands written on `conn` since last asked, as words (SCRIPT LOAD left out).
    fn commands(&mut self, conn: usize) -> Vec<Vec<String>> {
        let out = self.core.output(conn).to_vec();
        self.core.written(conn, out.len());
        let mut decoder = Decoder::default();
        decoder.feed(&out);
        let mut commands = Vec::new();
        while let Some(Value::Array(parts)) = decoder.next_reply().unwrap() {
            let words: Vec<String> = parts
                .into_iter()
                .map(|p| match p {
                    Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                    other => format!("{other:?}"),
                })
                .collect();
            self.owed.resize(self.core.conn_count(), Default::default());
            self.owed[conn].push_back(words[0] == "SCRIPT");
            if words[0] != "SCRIPT" {
                commands.push(words);
            }
        }
        commands
    }

    /// Answers the commands written on `conn`, in order: each of `replies` for the next one,
    /// with SCRIPT LOADs answered on the way.
    fn answer(&mut self, conn: usize, replies: &[&[u8]]) {
        let mut bytes = Vec::new();
        for reply in replies {
            while self.owed[conn].pop_front() == Some(true) {
                bytes.extend_from_slice(&sha_reply());
            }
            bytes.extend_from_slice(reply);
        }
        self.reply(conn, &bytes);
    }

    /// Raw bytes from the server on `conn`.
    fn reply(&mut self, conn: usize, bytes: &[u8]) {
        let epoch = self.epoch(conn);
        self.core.feed(conn, epoch, bytes, self.now);
    }

    fn done(&mut self) -> Vec<(CallId, Outcome)> {
        self.core
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Done(id, outcome) => Some((id, outcome)),
                _ => None,
            })
            .collect()
    }
}

fn spec(key: &str) -> AcquireSpec {
    AcquireSpec {
        key: key.into(),
        ttl: Duration::from_millis(10_000),
        auto_extend: false,
        watch: false,
        replicas: None,
        max_hold: None,
        write: false,
        also: Vec::new(),
    }
}

fn waiting(retry_delay_ms: u64) -> Option<RetryPolicy> {
    Some(RetryPolicy {
        retry_count: None,
        retry_delay: Duration::from_millis(retry_delay_ms),
        retry_jitter: Duration::ZERO,
        wait_timeout: None,
    })
}

/// `$40\r\n<sha>\r\n`: what SCRIPT LOAD answers.
fn sha_reply() -> Vec<u8> {
    format!("${SHA_LEN}\r\n{}\r\n", "0".repeat(SHA_LEN)).into_bytes()
}

#[test]
fn calls_made_while_the_socket_opens_go_out_in_order_on_it() {
    let mut h = Harness::single();
    h.core.call(
        1,
        Call::Release {
            key: "lock:a".into(),
            token: "t".into(),
        },
        h.now,
    );
    h.core.call(
        2,
        Call::Acquire {
            spec: spec("lock:a"),
            retry: None,
        },
        h.now,
    );
    h.core.call(
        3,
        Call::Exists {
            key: "lock:a".into(),
        },
        h.now,
    );
    assert!(
        h.core.output(0).is_empty(),
        "nothing is written before a socket is open"
    );
    h.open_all();
    let commands = h.commands(0);
    let names: Vec<&str> = commands.iter().map(|c| c[0].as_str()).collect();
    assert_eq!(names, ["EVALSHA", "EVALSHA", "EXISTS"]);
    assert_eq!(commands[0][3], "lock:a"); // the release first
    assert!(commands[1][4].contains(":fence:")); // then the acquire
}

#[test]
fn a_script_is_loaded_in_the_same_write_before_its_first_use() {
    let mut h = Harness::single();
    h.open_all();
    h.core.call(1, Call::Exists { key: "k".into() }, h.now);
    h.core.call(
        2,
        Call::Release {
            key: "k".into(),
            token: "t".into(),
        },
        h.now,
    );
    h.core.call(
        3,
        Call::Release {
            key: "k".into(),
            token: "t".into(),
        },
        h.now,
    );
    let out = String::from_utf8(h.core.output(0).to_vec()).unwrap();
    assert_eq!(out.matches("SCRIPT").count(), 1, "{out}");
    assert!(out.find("SCRIPT").unwrap() < out.find("EVALSHA").unwrap());
}

#[test]
fn replies_split_at_every_byte_give_the_same_outcomes() {
    let mut stream = Vec::new();
    stream.extend_from_slice(&sha_reply()); // SCRIPT LOAD (acquire)
    stream.extend_from_slice(b":7\r\n"); // acquire: fence 7
    stream.extend_from_slice(&sha_reply()); // SCRIPT LOAD (release)
    stream.extend_from_slice(b":1\r\n"); // release: deleted, nobody told
    stream.extend_from_slice(b":0\r\n"); // exists: no
    let run = |splits: &[usize]| {
        let mut h = Harness::single();
        h.open_all();
        h.core.call(
            1,
            Call::Acquire {
                spec: spec("k"),
                retry: None,
            },
            h.now,
        );
        h.core.call(
            2,
            Call::Release {
                key: "k".into(),
                token: "x".into(),
            },
            h.now,
        );
        h.core.call(3, Call::Exists { key: "k".into() }, h.now);
        let mut at = 0;
        for &split in splits.iter().chain([stream.len()].iter()) {
            h.reply(0, &stream[at..split]);
            at = split;
        }
        let mut done = h.done();
        done.sort_by_key(|(id, _)| *id);
        done.into_iter()
            .map(|(id, o)| match o {
                Outcome::Granted(g) => (id, format!("granted {:?}", g.fence)),
                other => (id, format!("{other:?}")),
            })
            .collect::<Vec<_>>()
    };
    let whole = run(&[]);
    assert_eq!(
        whole,
        vec![
            (1, "granted Some(7)".to_owned()),
            (2, "Flag(true)".to_owned()),
            (3, "Flag(false)".to_owned())
        ]
    );
    for split in 0..=stream.len() {
        assert_eq!(run(&[split]), whole, "split at {split}");
    }
    let every: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(run(&every), whole, "one byte at a time");
}

#[test]
fn noscript_is_answered_by_sending_the_script_itself() {
    let mut h = Harness::single();
    h.open_all();
    h.core.call(
        1,
        Call::Extend {
            key: "k".into(),
            token: "t".into(),
            ttl: Duration::from_secs(1),
        },
        h.now,
    );
    let _ = h.commands(0);
    h.reply(0, &sha_reply());
    h.reply(0, b"-NOSCRIPT No matching script.\r\n");
    let resent = h.commands(0);
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0][0], "EVAL");
    assert!(resent[0][1].contains("pexpire"));
    assert!(
        h.done().is_empty(),
        "no outcome until the script itself answered"
    );
    h.reply(0, b":1\r\n");
    assert_eq!(h.done(), vec![(1, Outcome::Flag(true))]);
}

#[test]
fn a_hand_over_release_is_quiet_and_the_waiters_attempt_follows_it_in_the_same_write() {
    let mut h = Harness::single();
    h.open_all();
    // Waiter 1 finds the lock held; then this Lock releases it (as holder 0 would).
    h.core.call(
        1,
        Call::Acquire {
            spec: spec("k"),
            retry: waiting(10_000),
        },
        h.now,
    );
    let _ = h.commands(0);
    h.reply(0, &sha_reply());
    h.reply(0, b":0\r\n"); // held
    let watch: Vec<Event> = h.core.take_events();
    assert!(
        watch.contains(&Event::Watch {
            key: "k".into(),
            home: None
        }),
        "{watch:?}"
    );
    h.core.call(
        2,
        Call::Release {
            key: "k".into(),
            token: "holder".into(),
        },
        h.now,
    );
    let written = h.commands(0);
    assert_eq!(written.len(), 2, "{written:?}");
    assert_eq!(written[0][0], "EVALSHA");
    assert_eq!(
        written[0].last().unwrap(),
        "",
        "a hand-over release publishes nothing"
    );
    assert_eq!(
        written[1][4],
        crate::keys::fence_key("k", ""),
        "the waiter's attempt comes right behind"
    );
    h.reply(0, &sha_reply());
    h.reply(0, b":1\r\n:8\r\n");
    let done = h.done();
    assert!(done.contains(&(2, Outcome::Flag(true))));
    assert!(
        done.iter()
            .any(|(id, o)| *id == 1 && matches!(o, Outcome::Granted(g) if g.fence == Some(8)))
    );
}

#[test]
fn a_new_waiter_queues_behind_this_locks_waiters_without_trying() {
    let mut h = Harness::single();
    h.open_all();
    h.core.call(
        1,
        Call::Acquire {
            spec: spec("k"),
            retry: waiting(10_000),
        },
        h.now,
    );
    h.core.call(
        2,
        Call::Acquire {
            spec: spec("k"),
            retry: waiting(10_000),
        },
        h.now,
    );
    assert_eq!(h.commands(0).len(), 1, "only the first waiter tries");
}

#[test]
fn a_socket_that_breaks_fails_what_was_in_flight_and_later_calls_wait_for_the_next() {
    let mut h = Harness::single();
    h.open_all();
    h.core.call(
        1,
        Call::Acquire {
            spec: spec("k"),
            retry: None,
        },
        h.now,
    );
    let sent = h.commands(0);
    let token = sent[0][5].clone();
    let epoch = h.epoch(0);
    h.core
        .socket_closed(0, epoch, "connection reset by peer", h.now);
    let done = h.done();
    assert!(
        matches!(&done[..], [(1, Outcome::Failed(e))] if e.kind() == ErrorKind::Connection),
        "{done:?}"
    );
    // A call made while the socket is down waits for the next one.
    h.advance(100);
    h.core.call(2, Call::Exists { key: "k".into() }, h.now);
    assert!(h.done().is_empty());
    h.open_all();
    let written = h.commands(0);
    // The unknown acquire is given back first, then the call that waited.
    assert_eq!(written[0][0], "EVALSHA");
    assert_eq!(written[0][3], "k");
    assert_eq!(
        written[0][4], token,
        "the give-back releases the unknown acquire's token"
    );
    assert_eq!(written[1][0], "EXISTS");
    h.reply(0, &sha_reply());
    h.reply(0, b":1\r\n:0\r\n");
    assert_eq!(h.done(), vec![(2, Outcome::Flag(false))]);
}

#[test]
fn a_call_waiting_for_a_dead_server_fails_with_the_connect_error_within_its_timeout() {
    let mut h = Harness::single();
    h.core.call(1, Call::Exists { key: "k".into() }, h.now);
    let mut attempts = 0;
    for _ in 0..40 {
        if h.core.wants_socket(0, h.now) {
            attempts += 1;
            let epoch = h.core.opening(0, h.now);
            let err = crate::error::cannot_connect("127.0.0.1:6379", "connection refused");
            h.core.open_failed(0, epoch, err, h.now);
        }
        h.advance(50);
        if !h.done().is_empty() {
            break;
        }
    }
    assert!(attempts >= 2, "it kept trying ({attempts})");
    // Outcomes were taken by the loop above; run it again to see the error itself.
    let mut h2 = Harness::single();
    h2.core.call(1, Call::Exists { key: "k".into() }, h2.now);
    let epoch = h2.core.opening(0, h2.now);
    h2.core.open_failed(
        0,
        epoch,
        crate::error::cannot_connect("127.0.0.1:6379", "connection refused"),
        h2.now,
    );
    h2.advance(1000);
    let done = h2.done();
    assert!(
        matches!(&done[..], [(1, Outcome::Failed(e))] if e.message().ends_with("connection refused")),
        "{done:?}"
    );
}

#[test]
fn a_timeout_is_declared_only_after_what_arrived_is_read() {
    let mut h = Harness::single();
    h.open_all();
    h.core.call(1, Call::Exists { key: "k".into() }, h.now);
    let _ = h.commands(0);
    h.reply(0, b":1\r\n"); // confirms the socket
    h.core.call(2, Call::Exists { key: "k".into() }, h.now);
    let _ = h.commands(0);
    // The reply is in before the transport tells the core that the deadline passed.
    h.now += Duration::from_millis(1500);
    h.reply(0, b":0\r\n");
    h.core.on_timer(h.now);
    let done = h.done();
    assert_eq!(
        done,
        vec![(1, Outcome::Flag(true)), (2, Outcome::Flag(false))]
    );
    // Without a reply, the same wait is a timeout, and the socket is dropped.
    h.core.call(3, Call::Exists { key: "k".into() }, h.now);
    let _ = h.commands(0);
    h.advance(1001);
    let done = h.done();
    assert!(
        matches!(&done[..], [(3, Outcome::Failed(e))] if e.kind() == ErrorKind::Timeout),
        "{done:?}"
    );
    assert_eq!(h.core.live_epoch(0), None);
}

#[test]
fn in_flight_requests_are_bounded_and_the_rest_wait_in_order() {
    let mut h = Harness::single();
    h.open_all();
    for id in 0..1500 {
        h.core.call(
            id,
            Call::Exists {
                key: format!("k{id}"),
            },
            h.now,
        );
    }
    assert_eq!(h.commands(0).len(), crate::proto::conn::MAX_IN_FLIGHT);
    h.reply(0, &b":0\r\n".repeat(10));
    let next = h.commands(0);
    assert_eq!(next.len(), 10);
    assert_eq!(next[0][1], "k1000");
}

#[test]
fn a_reply_that_does_not_fit_its_request_drops_the_socket() {
    let mut h = Harness::single();
    h.open_all();
    h.core.call(1, Call::Exists { key: "a".into() }, h.now);
    h.core.call(2, Call::Exists { key: "b".into() }, h.now);
    let _ = h.commands(0);
    // An unasked-for +OK came first: the replies are one behind their requests.
    h.reply(0, b"+OK\r\n:1\r\n");
    let done = h.done();
    assert!(
        matches!(&done[..], [(1, Outcome::Failed(a)), (2, Outcome::Failed(b))]
        if a.kind() == ErrorKind::Redis && b.kind() == ErrorKind::Connection),
        "{done:?}"
    );
    assert_eq!(h.core.live_epoch(0), None);
}

#[test]
fn a_reply_nobody_asked_for_drops_the_socket() {
    let mut h = Harness::single();
    h.open_all();
    h.reply(0, b"+OK\r\n");
    assert_eq!(h.core.live_epoch(0), None);
}

#[test]
fn redlock_decides_at_a_majority_and_gives_back_a_refused_acquire_everywhere_it_may_have_landed() {
    let mut h = Harness::redlock(3);
    h.open_all();
    h.core.call(
        1,
        Call::Acquire {
            spec: spec("k"),
            retry: None,
        },
        h.now,
    );
    for conn in 0..3 {
        assert_eq!(h.commands(conn).len(), 1);
        h.reply(conn, &sha_reply());
    }
    h.reply(0, b":3\r\n"); // yes
    h.reply(1, b":0\r\n"); // no
    assert!(h.done().is_empty(), "1 yes, 1 no: undecided");
    h.reply(2, b":0\r\n"); // no
    assert_eq!(h.done(), vec![(1, Outcome::Refused { attempts: 1 })]);
    // Given back on the master that granted it; not on those that refused.
    assert_eq!(h.commands(0).len(), 1);
    assert!(h.commands(1).is_empty() && h.commands(2).is_empty());
}

#[test]
fn redlock_validity_is_enforced_while_the_answers_come() {
    let mut h = Harness::redlock(3);
    h.open_all();
    let mut short = spec("k");
    short.ttl = Duration::from_millis(500);
    h.core.call(
        1,
        Call::Acquire {
            spec: short,
            retry: None,
        },
        h.now,
    );
    for conn in 0..3 {
        let _ = h.commands(conn);
        h.reply(conn, &sha_reply());
    }
    h.reply(0, b":1\r\n"); // one yes; the others are slow
    h.advance(495); // past ttl - (1% + 2 ms)
    let done = h.done();
    assert!(
        matches!(&done[..], [(1, Outcome::Failed(e))] if e.kind() == ErrorKind::Quorum && e.message().contains("validity")),
        "{done:?}"
    );
    // The grant it got goes back, and so do the two still to answer (behind their attempts).
    for conn in 0..3 {
        assert_eq!(h.commands(conn).len(), 1, "conn {conn}");
    }
}

#[test]
fn fairness_a_streak_of_hand_overs_ends_with_a_release_in_the_open() {
    let mut h = Harness::single();
    h.open_all();
    let mut published = Vec::new();
    for round in 0..6u64 {
        // A waiter here finds the lock held (by this Lock's own earlier holder).
        h.core.call(
            100 + round,
            Call::Acquire {
                spec: spec("k"),
                retry: waiting(10_000),
            },
            h.now,
        );
        let _ = h.commands(0);
        h.answer(0, &[b":0\r\n"]);
        let _ = h.done();
        h.core.call(
            200 + round,
            Call::Release {
                key: "k".into(),
                token: "t".into(),
            },
            h.now,
        );
        let written = h.commands(0);
        published.push(!written[0].last().unwrap().is_empty());
        match written.len() {
            // Hand-over: the release, and the waiter's attempt behind it, which gets the lock.
            2 => h.answer(0, &[b":1\r\n", b":5\r\n"]),
            // In the open, heard by another process: the waiter here holds back (yields).
            _ => {
                h.answer(0, &[b":3\r\n"]);
                assert!(
                    h.commands(0).is_empty(),
                    "it yields instead of trying at once"
                );
                h.advance(5);
                let retry = h.commands(0);
                assert_eq!(retry.len(), 1, "then tries");
                h.answer(0, &[b":5\r\n"]);
            }
        }
        let done = h.done();
        assert!(
            done.iter()
                .any(|(id, o)| *id == 100 + round && matches!(o, Outcome::Granted(_))),
            "{done:?}"
        );
    }
    assert_eq!(published, [false, false, false, false, true, false]);
}

#[test]
fn the_echo_of_this_locks_own_open_release_does_not_let_its_waiter_barge() {
    let mut h = Harness::single();
    h.open_all();
    h.core.call(
        1,
        Call::Acquire {
            spec: spec("k"),
            retry: waiting(10_000),
        },
        h.now,
    );
    let _ = h.commands(0);
    h.answer(0, &[b":0\r\n"]);
    // Five releases: four hand-overs, then one in the open.
    for round in 0..4 {
        h.core.call(
            10 + round,
            Call::Release {
                key: "k".into(),
                token: "t".into(),
            },
            h.now,
        );
        let _ = h.commands(0);
        h.answer(0, &[b":1\r\n", b":0\r\n"]); // the hand-over attempt finds it retaken
    }
    h.core.call(
        20,
        Call::Release {
            key: "k".into(),
            token: "t".into(),
        },
        h.now,
    );
    let written = h.commands(0);
    assert_eq!(
        written.len(),
        1,
        "the fifth release is open: nobody queued behind it"
    );
    // Its publication is heard (from the subscriber) before its reply is read here.
    h.core.release_heard("k", h.now);
    assert!(
        h.commands(0).is_empty(),
        "the echo is not a turn for the waiter here"
    );
    // The reply: heard by others too, so the waiter here holds back, then tries.
    h.answer(0, &[b":3\r\n"]);
    assert!(h.commands(0).is_empty());
    h.advance(2);
    assert_eq!(h.commands(0).len(), 1);
}

fn cluster() -> Harness {
    Harness::new(Topology::Cluster(vec![config(7000)]))
}

#[test]
fn on_a_cluster_a_waiter_listens_on_the_master_of_its_key() {
    // PUBLISH on a cluster counts only the subscribers on the node that ran it (the key's
    // master), and reaches the others only through the cluster bus, later: so a waiter
    // subscribes where its key lives.
    let mut h = cluster();
    h.core.call(
        1,
        Call::Acquire {
            spec: spec("k"),
            retry: waiting(10_000),
        },
        h.now,
    );
    h.open_all();
    let _ = h.commands(0);
    h.answer(
        0,
        &[b"*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:7001\r\n"],
    );
    h.open_all();
    let _ = h.commands(1);
    h.answer(1, &[b":0\r\n"]); // held
    let events = h.core.take_events();
    let homes: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Watch { key, home } => Some((key.clone(), home.as_ref().map(|c| c.target()))),
            _ => None,
        })
        .collect();
    assert_eq!(
        homes,
        [("k".to_string(), Some("127.0.0.1:7001".to_string()))]
    );
}

#[test]
fn a_redirect_to_a_slot_out_of_range_fails_the_call_and_nothing_panics() {
    let mut h = cluster();
    h.core.call(1, Call::Exists { key: "k".into() }, h.now);
    h.open_all();
    let asked = h.commands(0);
    assert_eq!(asked[0][0], "CLUSTER");
    // The whole range served by the one node, then a MOVED naming slot 65535.
    h.reply(
        0,
        b"*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n",
    );
    assert_eq!(h.commands(0)[0][0], "EXISTS");
    h.reply(0, b"-MOVED 65535 127.0.0.1:7001\r\n");
    let done = h.done();
    assert!(
        matches!(&done[..], [(1, Outcome::Failed(e))] if e.kind() == ErrorKind::Redis),
        "{done:?}"
    );
}

#[test]
fn a_moved_call_goes_to_the_node_named_and_the_map_learns_it() {
    let mut h = cluster();
    h.core.call(1, Call::Exists { key: "k".into() }, h.now);
    h.open_all();
    let _ = h.commands(0);
    h.reply(
        0,
        b"*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n",
    );
    let _ = h.commands(0);
    let slot = crate::keys::slot("k");
    h.reply(0, format!("-MOVED {slot} 127.0.0.1:7001\r\n").as_bytes());
    assert_eq!(h.core.conn_count(), 2, "a connection to the node named");
    h.open_all();
    assert_eq!(h.commands(1)[0][0], "EXISTS");
    h.reply(1, b":1\r\n");
    assert_eq!(h.done(), vec![(1, Outcome::Flag(true))]);
}

#[test]
fn a_refused_script_load_sends_scripts_as_eval_from_then_on() {
    let mut h = Harness::single();
    h.open_all();
    h.core.call(
        1,
        Call::Release {
            key: "k".into(),
            token: "t".into(),
        },
        h.now,
    );
    let _ = h.commands(0);
    h.reply(
        0,
        b"-NOPERM this user has no permissions to run the 'script|load' command\r\n",
    );
    h.reply(0, b"-NOSCRIPT No matching script.\r\n");
    assert_eq!(h.commands(0)[0][0], "EVAL");
    h.reply(0, b":1\r\n");
    assert_eq!(h.done(), vec![(1, Outcome::Flag(true))]);
    h.core.call(
        2,
        Call::Extend {
            key: "k".into(),
            token: "t".into(),
            ttl: Duration::from_secs(1),
        },
        h.now,
    );
    let out = String::from_utf8(h.core.output(0).to_vec()).unwrap();
    assert!(out.contains("EVAL\r\n") && !out.contains("SCRIPT"), "{out}");
}

#[test]
fn a_waiter_with_replicas_is_not_handed_a_lock_over_another_connection() {
    let mut h = Harness::single();
    h.open_all();
    let mut replicated = spec("k");
    replicated.replicas = Some(ReplicaAck {
        count: 1,
        timeout: Duration::from_millis(100),
    });
    h.core.call(
        1,
        Call::Acquire {
            spec: replicated,
            retry: waiting(10_000),
        },
        h.now,
    );
    h.open_all(); // the connection kept for WAIT
    let on_wait_conn = h.commands(1);
    assert_eq!(
        on_wait_conn.len(),
        2,
        "SET and WAIT on their own connection"
    );
    h.answer(1, &[b":0\r\n", b":0\r\n"]); // held
    let _ = h.done();
    h.core.call(
        2,
        Call::Release {
            key: "k".into(),
            token: "holder".into(),
        },
        h.now,
    );
    let written = h.commands(0);
    assert_eq!(written.len(), 1);
    assert!(
        !written[0].last().unwrap().is_empty(),
        "released in the open, so the waiter hears it"
    );
}

#[test]
fn redlock_a_majority_that_comes_after_the_validity_time_is_not_acquired_and_a_waiter_tries_again()
{
    let mut h = Harness::redlock(3);
    h.open_all();
    let mut short = spec("k");
    short.ttl = Duration::from_millis(500);
    h.core.call(
        1,
        Call::Acquire {
            spec: short,
            retry: waiting(50),
        },
        h.now,
    );
    for conn in 0..3 {
        let _ = h.commands(conn);
    }
    h.now += Duration::from_millis(600); // the replies are read late (a blocked thread)
    for conn in 0..3 {
        h.answer(conn, &[b":1\r\n"]);
    }
    assert!(h.done().is_empty(), "not granted, and the waiter goes on");
    for conn in 0..3 {
        assert_eq!(
            h.commands(conn).len(),
            1,
            "the late grants are given back (conn {conn})"
        );
        h.answer(conn, &[b":1\r\n"]);
    }
}

#[test]
fn an_echoed_auth_never_shows_the_password_in_the_error() {
    let mut settings = config(6379);
    settings.password = Some("hunter2-very-secret".into());
    let mut h = Harness::new(Topology::Single(settings));
    h.core.call(1, Call::Exists { key: "k".into() }, h.now);
    h.open_all();
    // A peer that echoes what it gets: AUTH comes back as an array of bulk strings.
    let out = h.core.output(0).to_vec();
    h.core.written(0, out.len());
    h.reply(0, &out);
    h.advance(1000);
    let done = h.done();
    assert!(matches!(&done[..], [(1, Outcome::Failed(_))]), "{done:?}");
    let Outcome::Failed(err) = &done[0].1 else {
        unreachable!()
    };
    assert!(!err.message().contains("hunter2"), "{}", err.message());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Whatever a server sends, split however, the core never panics and every call ends
    /// with exactly one outcome once its time is up.
    #[test]
    fn any_byte_stream_ends_every_call(
        stream in prop::collection::vec(any::<u8>(), 0..400),
        splits in prop::collection::vec(0usize..400, 0..8),
        calls in 1usize..6,
    ) {
        let mut h = Harness::single();
        h.open_all();
        for id in 0..calls as u64 {
            let call = match id % 4 {
                0 => Call::Acquire { spec: spec("k"), retry: None },
                1 => Call::Release { key: "k".into(), token: "t".into() },
                2 => Call::Exists { key: "k".into() },
                _ => Call::Acquire { spec: spec("k"), retry: waiting(50) },
            };
            h.core.call(id, call, h.now);
        }
        let mut cuts: Vec<usize> = splits.into_iter().filter(|s| *s < stream.len()).collect();
        cuts.sort();
        let mut at = 0;
        let mut outcomes = std::collections::HashMap::new();
        for cut in cuts.into_iter().chain([stream.len()]) {
            if let Some(epoch) = h.core.live_epoch(0) {
                h.core.feed(0, epoch, &stream[at..cut], h.now);
            }
            at = cut;
            for (id, outcome) in h.done() {
                prop_assert!(outcomes.insert(id, outcome).is_none(), "two outcomes for {id}");
            }
        }
        // Then time passes; sockets keep breaking; nothing is left hanging.
        for _ in 0..200 {
            h.advance(100);
            if h.core.wants_socket(0, h.now) {
                let epoch = h.core.opening(0, h.now);
                h.core.open_failed(0, epoch, crate::error::cannot_connect("x", "refused"), h.now);
            }
            for (id, outcome) in h.done() {
                prop_assert!(outcomes.insert(id, outcome).is_none(), "two outcomes for {id}");
            }
            if outcomes.len() == calls {
                break;
            }
        }
        prop_assert_eq!(outcomes.len(), calls);
    }

    /// Redlock's tally over any order of answers: a grant only with a majority of yeses.
    #[test]
    fn redlock_grants_only_with_a_majority(answers in prop::collection::vec(0u8..3, 5)) {
        let mut h = Harness::redlock(5);
        h.open_all();
        h.core.call(1, Call::Acquire { spec: spec("k"), retry: None }, h.now);
        for conn in 0..5 {
            let _ = h.commands(conn);
            h.reply(conn, &sha_reply());
        }
        let yes = answers.iter().filter(|a| **a == 0).count();
        for (conn, answer) in answers.iter().enumerate() {
            let bytes: &[u8] = match answer {
                0 => b":1\r\n",
                1 => b":0\r\n",
                _ => b"-ERR boom\r\n",
            };
            h.reply(conn, bytes);
        }
        let done = h.done();
        prop_assert_eq!(done.len(), 1);
        let granted = matches!(done[0].1, Outcome::Granted(_));
        prop_assert_eq!(granted, yes >= 3);
    }
}

impl Harness {
    /// The notices among the events since last asked (the outcomes are dropped).
    fn notices(&mut self) -> Vec<Notice> {
        self.core
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Notice(notice) => Some(notice),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn notices_tell_a_socket_opened_broken_reopened_and_a_script_reloaded() {
    let mut h = Harness::single();
    h.open_all();
    let target = "127.0.0.1:6379".to_owned();
    assert_eq!(
        h.notices(),
        vec![Notice::Opened {
            target: target.clone(),
            again: false
        }]
    );
    h.core.call(1, Call::Exists { key: "k".into() }, h.now);
    let _ = h.commands(0);
    h.reply(0, b":1\r\n");
    let epoch = h.epoch(0);
    h.core
        .socket_closed(0, epoch, "connection reset by peer", h.now);
    let broken = h.notices();
    assert!(
        matches!(&broken[..], [Notice::Broken { target: t, why }] if *t == target && why.contains("connection reset by peer")),
        "{broken:?}"
    );
    h.core.call(
        2,
        Call::Extend {
            key: "k".into(),
            token: "t".into(),
            ttl: Duration::from_secs(1),
        },
        h.now,
    );
    h.epochs[0] = None;
    h.open_all();
    assert_eq!(
        h.notices(),
        vec![Notice::Opened {
            target: target.clone(),
            again: true
        }]
    );
    let _ = h.commands(0);
    h.reply(0, &sha_reply());
    h.reply(0, b":1\r\n");
    assert!(
        h.notices().is_empty(),
        "a script loaded as planned is no news"
    );
    h.core.call(
        3,
        Call::Extend {
            key: "k".into(),
            token: "t".into(),
            ttl: Duration::from_secs(1),
        },
        h.now,
    );
    let _ = h.commands(0);
    h.reply(0, b"-NOSCRIPT No matching script.\r\n");
    assert_eq!(h.notices(), vec![Notice::ScriptReloaded { target }]);
}

#[test]
fn notices_tell_a_failed_connect_with_its_backoff_and_never_the_password() {
    let mut settings = config(6379);
    settings.password = Some("hunter2-very-secret".into());
    let mut h = Harness::new(Topology::Single(settings));
    h.core.call(1, Call::Exists { key: "k".into() }, h.now);
    let epoch = h.core.opening(0, h.now);
    h.core.open_failed(
        0,
        epoch,
        crate::error::cannot_connect("127.0.0.1:6379", "connection refused"),
        h.now,
    );
    let notices = h.notices();
    assert!(
        matches!(&notices[..], [Notice::OpenFailed { why, retry_in, .. }] if why.contains("connection refused") && !retry_in.is_zero()),
        "{notices:?}"
    );
    // A peer that echoes what it gets: AUTH, password and all, comes back.
    h.advance(10_000);
    h.epochs = Vec::new();
    h.open_all();
    let out = h.core.output(0).to_vec();
    h.core.written(0, out.len());
    h.reply(0, &out);
    h.advance(1000);
    let told = format!("{:?}", h.notices());
    assert!(told.contains("OpenFailed"), "{told}");
    assert!(!told.contains("hunter2"), "{told}");
}

#[test]
fn notices_tell_a_cluster_redirect() {
    let mut h = cluster();
    h.core.call(1, Call::Exists { key: "k".into() }, h.now);
    h.open_all();
    let _ = h.commands(0);
    h.reply(
        0,
        b"*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n",
    );
    let _ = h.commands(0);
    let slot = crate::keys::slot("k");
    let _ = h.notices();
    h.reply(0, format!("-MOVED {slot} 127.0.0.1:7001\r\n").as_bytes());
    assert_eq!(
        h.notices(),
        vec![Notice::Redirected {
            from: "127.0.0.1:7000".into(),
            ask: false,
            slot,
            to: "127.0.0.1:7001".into()
        }]
    );
}

#[test]
fn redlock_votes_are_told_when_asked_for_and_when_a_master_failed() {
    let acquire = |h: &mut Harness, id: CallId, replies: [&[u8]; 3]| {
        h.core.call(
            id,
            Call::Acquire {
                spec: spec("k"),
                retry: None,
            },
            h.now,
        );
        for (conn, reply) in replies.iter().enumerate() {
            let _ = h.commands(conn);
            h.answer(conn, &[reply]);
        }
    };
    let mut h = Harness::redlock(3);
    h.open_all();
    let _ = h.notices();
    acquire(&mut h, 1, [b":1\r\n", b":1\r\n", b":1\r\n"]);
    assert!(
        h.notices().is_empty(),
        "a plain majority is no news unasked"
    );
    acquire(&mut h, 2, [b"-ERR boom\r\n", b":2\r\n", b":2\r\n"]);
    let notices = h.notices();
    let [
        Notice::Quorum {
            key,
            granted,
            votes,
        },
    ] = &notices[..]
    else {
        panic!("{notices:?}");
    };
    assert_eq!((key.as_str(), *granted), ("k", true));
    assert!(matches!(&votes[0].answer, VoteAnswer::Failed(why) if why.contains("boom")));
    assert_eq!(votes[0].target, "127.0.0.1:7000");
    h.core.set_votes_wanted(true);
    acquire(&mut h, 3, [b":0\r\n", b":0\r\n", b":0\r\n"]);
    let notices = h.notices();
    let [Notice::Quorum { granted, votes, .. }] = &notices[..] else {
        panic!("{notices:?}");
    };
    assert!(!granted);
    assert!(
        votes
            .iter()
            .all(|v| matches!(v.answer, VoteAnswer::Refused | VoteAnswer::Pending))
    );
}

#[test]
fn a_semaphore_core_takes_permits_by_script_and_gives_back_a_lost_one_as_a_permit() {
    let mut h = Harness::single();
    h.core.set_semaphore(3).unwrap();
    h.open_all();
    h.core.call(
        1,
        Call::Acquire {
            spec: spec("sem"),
            retry: None,
        },
        h.now,
    );
    let sent = h.commands(0);
    assert_eq!(sent[0][0], "EVALSHA");
    assert_eq!(sent[0][1], crate::scripts::Script::SemAcquire.sha());
    assert_eq!(&sent[0][2..4], ["1", "sem"]);
    assert_eq!(sent[0][6], "3", "the permits go with every acquire");
    let token = sent[0][4].clone();
    h.answer(0, &[b":1\r\n"]);
    let done = h.done();
    assert!(
        matches!(&done[..], [(1, Outcome::Granted(g))] if g.token == token && g.fence.is_none()),
        "{done:?}"
    );
    // An acquire whose reply never comes is given back as a permit, not as a lock.
    h.core.call(
        2,
        Call::Acquire {
            spec: spec("sem"),
            retry: None,
        },
        h.now,
    );
    let lost = h.commands(0)[0][4].clone();
    let epoch = h.epoch(0);
    h.core.socket_closed(0, epoch, "reset", h.now);
    h.epochs[0] = None;
    h.open_all();
    let written = h.commands(0);
    assert_eq!(written[0][1], crate::scripts::Script::SemRelease.sha());
    assert_eq!(written[0][4], lost);
    // Count and Exists read live permits.
    h.core.call(3, Call::Count { key: "sem".into() }, h.now);
    let sent = h.commands(0);
    assert_eq!(
        sent.last().unwrap()[1],
        crate::scripts::Script::SemCount.sha()
    );
}

#[test]
fn a_semaphore_over_redlock_is_refused() {
    let mut h = Harness::redlock(3);
    let err = h.core.set_semaphore(2).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

#[test]
fn a_read_write_core_marks_a_waiting_writer_releases_in_the_open_and_wakes_every_waiter() {
    let mut h = Harness::single();
    h.core.set_read_write().unwrap();
    h.open_all();
    let rw_spec = |write| AcquireSpec {
        write,
        ..spec("rw")
    };
    // A writer that will wait marks itself for its poll interval plus the slack.
    h.core.call(
        1,
        Call::Acquire {
            spec: rw_spec(true),
            retry: waiting(10_000),
        },
        h.now,
    );
    let sent = h.commands(0);
    assert_eq!(sent[0][1], crate::scripts::Script::RwAcquire.sha());
    assert_eq!(
        &sent[0][2..6],
        [
            "3".to_owned(),
            "rw".to_owned(),
            crate::keys::rw_writer_key("rw"),
            crate::keys::rw_mark_key("rw")
        ]
    );
    assert_eq!(&sent[0][8..10], ["1", "10250"], "write side, marked");
    h.answer(0, &[b":0\r\n"]);
    // A reader joins behind it without trying; a single-attempt writer marks nothing.
    h.core.call(
        2,
        Call::Acquire {
            spec: rw_spec(false),
            retry: waiting(10_000),
        },
        h.now,
    );
    h.core.call(
        3,
        Call::Acquire {
            spec: rw_spec(true),
            retry: None,
        },
        h.now,
    );
    let sent = h.commands(0);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(&sent[0][8..10], ["1", "0"]);
    h.answer(0, &[b":0\r\n"]);
    // A release with waiters here is made in the open: published, no attempt behind it.
    h.core.call(
        4,
        Call::Release {
            key: "rw".into(),
            token: "holder".into(),
        },
        h.now,
    );
    let sent = h.commands(0);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0][1], crate::scripts::Script::RwRelease.sha());
    assert_eq!(
        sent[0].last().unwrap(),
        &crate::keys::released_channel("rw")
    );
    h.answer(0, &[b":2\r\n"]);
    // Heard: every waiter tries, first come first.
    h.core.release_heard("rw", h.now);
    let sent = h.commands(0);
    let sides: Vec<&str> = sent.iter().map(|c| c[8].as_str()).collect();
    assert_eq!(sides, ["1", "0"], "{sent:?}");
    h.answer(0, &[b":1\r\n", b":0\r\n"]);
    let done = h.done();
    assert!(
        done.iter()
            .any(|(id, o)| *id == 1 && matches!(o, Outcome::Granted(g) if g.fence.is_none())),
        "{done:?}"
    );
}

#[test]
fn a_read_write_lock_over_redlock_is_refused() {
    let mut h = Harness::redlock(3);
    let err = h.core.set_read_write().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

#[test]
fn a_release_whose_reply_is_lost_is_sent_again_first_on_the_next_socket() {
    let mut h = Harness::single();
    h.open_all();
    h.core.call(
        1,
        Call::Release {
            key: "k".into(),
            token: "mine".into(),
        },
        h.now,
    );
    let sent = h.commands(0);
    assert_eq!(sent[0][1], crate::scripts::Script::Release.sha());
    let epoch = h.epoch(0);
    h.core.socket_closed(0, epoch, "reset", h.now);
    h.epochs[0] = None;
    let done = h.done();
    assert!(
        matches!(&done[..], [(1, Outcome::Failed(_))]),
        "its caller is told: {done:?}"
    );
    h.open_all();
    let written = h.commands(0);
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0][1], crate::scripts::Script::Release.sha());
    assert_eq!(written[0][4], "mine", "the same token");
    assert_eq!(
        written[0][5],
        crate::keys::released_channel("k"),
        "and it tells waiters"
    );
}

#[test]
fn a_release_a_replica_refused_with_readonly_is_sent_again_to_the_next_socket() {
    let mut h = Harness::single();
    h.open_all();
    h.core.call(
        1,
        Call::Release {
            key: "k".into(),
            token: "mine".into(),
        },
        h.now,
    );
    let _ = h.commands(0);
    h.answer(
        0,
        &[b"-READONLY You can't write against a read only replica.\r\n"],
    );
    let done = h.done();
    assert!(
        matches!(&done[..], [(1, Outcome::Failed(e))] if e.message().contains("READONLY")),
        "its caller is told: {done:?}"
    );
    assert!(
        h.core.live_epoch(0).is_none(),
        "the socket to the replica is dropped"
    );
    h.open_all();
    let written = h.commands(0);
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0][1], crate::scripts::Script::Release.sha());
    assert_eq!(written[0][4], "mine");
}

#[test]
fn a_lock_over_several_resources_takes_one_script_on_one_server_and_an_empty_release_is_refused() {
    let mut h = Harness::single();
    h.open_all();
    h.core.call(
        1,
        Call::Acquire {
            spec: AcquireSpec {
                also: vec!["b".into(), "c".into()],
                ..spec("a")
            },
            retry: None,
        },
        h.now,
    );
    let sent = h.commands(0);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0][1], crate::scripts::Script::AcquireAll.sha());
    assert_eq!(&sent[0][2..6], ["3", "a", "b", "c"]);
    h.answer(0, &[b":0\r\n"]);
    assert!(matches!(&h.done()[..], [(1, Outcome::Refused { .. })]));
    // A release over several: every key in one script; an empty one is refused, not a panic.
    h.core.call(
        2,
        Call::ReleaseAll {
            keys: vec![],
            token: "t".into(),
        },
        h.now,
    );
    assert!(matches!(&h.done()[..], [(2, Outcome::Flag(false))]));
}

#[test]
fn on_a_cluster_slots_are_taken_in_order_and_a_refusal_rolls_back_every_earlier_one_even_past_a_failure()
 {
    let mut h = cluster();
    // Slots: b 3300, c 7365, a 15495: taken b, c, a.
    h.core.call(
        1,
        Call::Acquire {
            spec: AcquireSpec {
                also: vec!["b".into(), "c".into()],
                ..spec("a")
            },
            retry: None,
        },
        h.now,
    );
    h.open_all();
    let _ = h.commands(0); // CLUSTER SLOTS
    h.answer(
        0,
        &[b"*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n"],
    );
    let mut order = Vec::new();
    for reply in [&b":1\r\n"[..], b":1\r\n"] {
        let sent = h.commands(0);
        assert_eq!(sent.len(), 1, "one group at a time: {sent:?}");
        assert_eq!(sent[0][1], crate::scripts::Script::AcquireAll.sha());
        order.push(sent[0][3].clone());
        h.answer(0, &[reply]);
        assert!(h.done().is_empty(), "not decided before the last group");
    }
    let sent = h.commands(0);
    order.push(sent[0][3].clone());
    assert_eq!(order, ["b", "c", "a"], "slot order");
    h.answer(0, &[b":0\r\n"]); // a is held
    // The rollback: b, then c even though b's release failed; then the refusal.
    let sent = h.commands(0);
    assert_eq!(sent[0][1], crate::scripts::Script::ReleaseAll.sha());
    assert_eq!(sent[0][3], "b");
    h.answer(0, &[b"-ERR boom\r\n"]);
    assert!(h.done().is_empty(), "the refusal waits for the rollback");
    let sent = h.commands(0);
    assert_eq!(sent[0][1], crate::scripts::Script::ReleaseAll.sha());
    assert_eq!(sent[0][3], "c");
    h.answer(0, &[b":1\r\n"]);
    assert!(matches!(&h.done()[..], [(1, Outcome::Refused { .. })]));
}
