//! One connection to one Redis server, without its socket (sans-IO).
//!
//! Requests are queued in the order they are made and written in that order; replies come back
//! in that order, so in-flight requests are a queue too. The transport that owns the socket
//! (libuv on Node's event loop, or a tokio task) tells the connection what happened: a socket
//! opened or failed to open, bytes arrived, the socket broke, time passed. The connection says
//! what to write, whether it wants a socket, and when it next needs the clock.
//!
//! - **Opening.** A connection wants a socket while requests (or locks to give back) wait and
//!   it has none. AUTH, SELECT and, behind Sentinel, ROLE go first; requests wait behind them.
//!   Until the first reply arrives the socket is unconfirmed: a server that accepts TCP and
//!   never speaks is a failed connection attempt (bounded by the connect timeout), not a slow
//!   reply.
//! - **Waiting through a break.** A request made while the socket is broken or reopening waits
//!   for the next socket, within its command timeout; it never fails just because an earlier
//!   socket died. Requests in flight when a socket breaks fail: nobody knows whether they ran.
//! - **Unknown acquires are given back.** An acquire whose outcome is unknown (its socket broke,
//!   its reply timed out) may have taken the lock for a token nobody holds: once a socket is
//!   open again, its release is sent first, before anything that waited. A release whose
//!   outcome is unknown is sent again the same way.
//! - **Scripts.** The first use of a script on a socket is preceded by SCRIPT LOAD in the same
//!   write, so a fresh or restarted server costs no extra round trip; a NOSCRIPT (SCRIPT FLUSH
//!   under a live socket) is answered by sending the script itself (EVAL): one more round trip.
//! - **Timeouts.** A reply is late when the oldest request in flight has waited longer than the
//!   command timeout since it was written; the transport reads what the socket holds before it
//!   tells the connection that time passed, so a reply already received is never declared late.
//!   A late reply drops the socket.
//! - **Backpressure.** At most `max_in_flight` requests are written and unanswered; the rest
//!   wait in order, unencoded.
//! - **Hostile replies.** Malformed, oversized or unasked-for replies drop the socket (failing
//!   what was in flight); the decoder bounds what a reply may cost (see `resp`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use redis::Value;

use crate::config::ServerConfig;
use crate::error::{self, EngineError, ErrorKind};
use crate::notice::Notice;
use crate::proto::request::{Reply, Request};
use crate::proto::resp::Decoder;

/// Who made a request; chosen by the owner of the connection, handed back with the answer.
pub(crate) type Tag = u64;

/// The tag of a give-back's answer: nobody made it (see `Core`).
pub(crate) const UNOWNED: Tag = u64::MAX;

/// Requests written and not yet answered, at most (valkey-glide's default is 1000 too).
pub(crate) const MAX_IN_FLIGHT: usize = 1000;

/// How long to wait before opening again after an attempt failed, at first and at most.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(1000);

/// How to talk to the server once a socket is open.
#[derive(Clone)]
pub(crate) struct ConnSettings {
    /// What messages call the server (`host:port`, a path, or a Sentinel-found master).
    pub target: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
    /// Behind Sentinel: check with ROLE that the server is still the master.
    pub check_master: bool,
    pub max_in_flight: usize,
}

impl ConnSettings {
    pub(crate) fn for_server(config: &ServerConfig) -> Self {
        Self {
            target: config.target(),
            connect_timeout: config.connect_timeout,
            command_timeout: config.command_timeout,
            username: config.username.clone(),
            password: config.password.clone(),
            db: config.db,
            check_master: false,
            max_in_flight: MAX_IN_FLIGHT,
        }
    }
}

/// What became of a request.
#[derive(Debug)]
pub(crate) struct Answer {
    pub tag: Tag,
    pub request: Request,
    pub outcome: Answered,
    /// When the request was written (for an acquire: no earlier than this did its TTL start);
    /// `None` if it never was.
    pub sent_at: Option<Instant>,
}

#[derive(Debug)]
pub(crate) enum Answered {
    Reply(Reply),
    /// An error reply (`code`: its first word), or the connection's own failure (`code` None).
    Failed {
        error: EngineError,
        code: Option<String>,
    },
    /// Redis Cluster: the slot is served elsewhere (`MOVED`), or this once elsewhere (`ASK`).
    Redirected {
        ask: bool,
        slot: u16,
        host: String,
        port: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No socket.
    Down,
    /// The transport is opening one (connect, TLS, finding the master).
    Opening {
        until: Instant,
        limit: Duration,
    },
    /// Open; the handshake's replies are awaited before anything else is written.
    Handshake,
    Up,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Call(Tag),
    Handshake,
    /// A script load or a give-back: nobody waits for the reply.
    Internal,
}

struct Queued {
    tag: Tag,
    request: Request,
    queued_at: Instant,
    /// Redis Cluster's ASK: this once, on this node (ASKING goes right before it).
    asking: bool,
}

struct Sent {
    purpose: Purpose,
    request: Request,
    sent_at: Instant,
    deadline: Instant,
}

/// A lock that may have been taken for a token nobody holds.
struct GiveBack {
    /// The release that gives it back.
    request: Request,
    /// Past this, the lock expired anyway.
    until: Instant,
}

pub(crate) struct Conn {
    settings: ConnSettings,
    phase: Phase,
    /// Identifies the current socket; a transport's news about another one is stale.
    epoch: u64,
    queue: VecDeque<Queued>,
    in_flight: VecDeque<Sent>,
    out: Vec<u8>,
    decoder: Decoder,
    /// Scripts this socket's server has cached (`Script::bit`).
    scripts: u32,
    /// SCRIPT LOAD was refused: scripts go as EVAL.
    eval_only: bool,
    give_backs: Vec<GiveBack>,
    /// Whether a reply has come on this socket.
    confirmed: bool,
    opened_at: Instant,
    retry_at: Option<Instant>,
    backoff: Duration,
    last_error: Option<EngineError>,
    answers: Vec<Answer>,
    /// Sockets that came up so far.
    ups: u32,
    notices: Vec<Notice>,
}

impl Conn {
    pub(crate) fn new(settings: ConnSettings, now: Instant) -> Self {
        Self {
            settings,
            phase: Phase::Down,
            epoch: 0,
            queue: VecDeque::new(),
            in_flight: VecDeque::new(),
            out: Vec::new(),
            decoder: Decoder::default(),
            scripts: 0,
            eval_only: false,
            give_backs: Vec::new(),
            confirmed: false,
            opened_at: now,
            retry_at: None,
            backoff: FIRST_BACKOFF,
            last_error: None,
            answers: Vec::new(),
            ups: 0,
            notices: Vec::new(),
        }
    }

    /// What happened to this connection since the last call (see `notice`).
    pub(crate) fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    pub(crate) fn has_notices(&self) -> bool {
        !self.notices.is_empty()
    }

    pub(crate) fn target(&self) -> &str {
        &self.settings.target
    }

    pub(crate) fn settings(&self) -> &ConnSettings {
        &self.settings
    }

    /// Queues a request; it is written as soon as a socket is up and in-flight room allows.
    pub(crate) fn submit(&mut self, tag: Tag, request: Request, now: Instant) {
        self.enqueue(tag, request, now, false);
    }

    /// Like `submit`, preceded by ASKING (a cluster slot being migrated to this node).
    pub(crate) fn submit_asking(&mut self, tag: Tag, request: Request, now: Instant) {
        self.enqueue(tag, request, now, true);
    }

    fn enqueue(&mut self, tag: Tag, request: Request, now: Instant, asking: bool) {
        if self.phase == Phase::Closed {
            self.answers.push(Answer {
                tag,
                request,
                outcome: failed(EngineError::closed()),
                sent_at: None,
            });
            return;
        }
        self.queue.push_back(Queued {
            tag,
            request,
            queued_at: now,
            asking,
        });
        self.pump(now);
    }

    /// Sends `request` ahead of everything queued and nobody waits for its reply: a give-back.
    fn give_back(&mut self, request: Request, until: Instant) {
        self.give_backs.push(GiveBack { request, until });
    }

    /// Whether the transport should open a socket now.
    pub(crate) fn wants_socket(&self, now: Instant) -> bool {
        self.phase == Phase::Down
            && (!self.queue.is_empty() || !self.give_backs.is_empty())
            && self.retry_at.is_none_or(|at| now >= at)
    }

    /// The transport starts opening a socket, to be open within `limit` (the connect timeout,
    /// or more when the sentinels are asked first); returns the epoch its news must carry.
    pub(crate) fn opening(&mut self, now: Instant, limit: Duration) -> u64 {
        self.epoch += 1;
        self.phase = Phase::Opening {
            until: now + limit,
            limit,
        };
        self.epoch
    }

    /// The epoch of the socket the transport should have open (or be opening), if any.
    pub(crate) fn live_epoch(&self) -> Option<u64> {
        match self.phase {
            Phase::Opening { .. } | Phase::Handshake | Phase::Up => Some(self.epoch),
            Phase::Down | Phase::Closed => None,
        }
    }

    /// Whether the socket of `epoch` is open and may be written (not while it is being opened).
    pub(crate) fn is_open(&self, epoch: u64) -> bool {
        self.epoch == epoch && matches!(self.phase, Phase::Handshake | Phase::Up)
    }

    /// The socket of `epoch` is open (connected, TLS done). `false` if that socket is not
    /// wanted any more (the transport closes it).
    pub(crate) fn opened(&mut self, epoch: u64, now: Instant) -> bool {
        if epoch != self.epoch || !matches!(self.phase, Phase::Opening { .. }) {
            return false;
        }
        self.decoder = Decoder::default();
        self.scripts = 0;
        self.confirmed = false;
        self.opened_at = now;
        self.out.clear();
        let mut handshake = Vec::new();
        if let Some(password) = &self.settings.password {
            handshake.push(Request::Auth {
                username: self.settings.username.clone(),
                password: password.clone(),
            });
        }
        if self.settings.db != 0 {
            handshake.push(Request::Select {
                db: self.settings.db,
            });
        }
        if self.settings.check_master {
            handshake.push(Request::Role);
        }
        if handshake.is_empty() {
            self.up(now);
        } else {
            self.phase = Phase::Handshake;
            for request in handshake {
                self.write(Purpose::Handshake, request, now);
            }
        }
        true
    }

    /// Opening the socket of `epoch` failed.
    pub(crate) fn open_failed(&mut self, epoch: u64, err: EngineError, now: Instant) {
        if epoch != self.epoch || !matches!(self.phase, Phase::Opening { .. }) {
            return;
        }
        self.phase = Phase::Down;
        self.failed_attempt(err, now);
    }

    /// Bytes arrived on the socket of `epoch`.
    pub(crate) fn feed(&mut self, epoch: u64, bytes: &[u8], now: Instant) {
        if !self.is_open(epoch) {
            return;
        }
        self.decoder.feed(bytes);
        loop {
            match self.decoder.next_reply() {
                Ok(Some(value)) => {
                    self.confirmed = true;
                    self.backoff = FIRST_BACKOFF;
                    let Some(sent) = self.in_flight.pop_front() else {
                        let err = error::connection_failed(
                            &self.settings.target,
                            "a reply came that nothing asked for",
                        );
                        return self.broken(err, now);
                    };
                    self.answer(sent, value, now);
                    if !self.is_open(epoch) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(why) => {
                    let err = error::connection_failed(
                        &self.settings.target,
                        &format!("protocol error: {why}"),
                    );
                    return self.broken(err, now);
                }
            }
        }
        self.pump(now);
    }

    /// The socket of `epoch` broke or closed (`why`: the OS's or the peer's words).
    pub(crate) fn socket_closed(&mut self, epoch: u64, why: &str, now: Instant) {
        if self.live_epoch() != Some(epoch) {
            return;
        }
        let err = if matches!(self.phase, Phase::Opening { .. }) {
            error::cannot_connect(&self.settings.target, why)
        } else {
            error::connection_failed(&self.settings.target, why)
        };
        if matches!(self.phase, Phase::Opening { .. }) {
            self.phase = Phase::Down;
            self.failed_attempt(err, now);
        } else {
            self.broken(err, now);
        }
    }

    /// Drops the socket (a failover was announced): requests in flight fail, the rest wait.
    pub(crate) fn reconnect(&mut self, why: &str, now: Instant) {
        if self.live_epoch().is_some() {
            let err = error::connection_failed(&self.settings.target, why);
            self.broken(err, now);
            self.retry_at = None;
        }
    }

    /// Time passed: late replies, requests that waited too long, a slow opening.
    pub(crate) fn on_timer(&mut self, now: Instant) {
        if let Phase::Opening { until, limit } = self.phase
            && now >= until
        {
            let err = error::cannot_connect(
                &self.settings.target,
                &format!("no answer within {} ms", limit.as_millis()),
            );
            self.phase = Phase::Down;
            self.failed_attempt(err, now);
        }
        if let Some(front) = self.in_flight.front()
            && now >= front.deadline
        {
            let err = if self.confirmed {
                error::timed_out(&self.settings.target, self.settings.command_timeout)
            } else {
                error::cannot_connect(
                    &self.settings.target,
                    &format!(
                        "no answer within {} ms",
                        self.settings.connect_timeout.as_millis()
                    ),
                )
            };
            self.broken(err, now);
        }
        let limit = self.queue_limit();
        while self
            .queue
            .front()
            .is_some_and(|q| now >= q.queued_at + limit)
        {
            let Some(queued) = self.queue.pop_front() else {
                break;
            };
            let err = match (&self.phase, &self.last_error) {
                (Phase::Down, Some(err)) => err.clone(),
                (Phase::Down | Phase::Opening { .. }, None) => error::cannot_connect(
                    &self.settings.target,
                    &format!("no answer within {} ms", limit.as_millis()),
                ),
                _ => error::timed_out(&self.settings.target, limit),
            };
            self.answers.push(Answer {
                tag: queued.tag,
                request: queued.request,
                outcome: failed(err),
                sent_at: None,
            });
        }
        self.give_backs.retain(|g| g.until > now);
    }

    /// How long a request may wait unwritten: its command timeout; while a socket is being
    /// opened (and has not failed yet), the connect timeout on top, so a slow first connection
    /// (a TLS handshake far away, a loaded machine) does not eat the request's own time. A
    /// refused or failing server still fails it at the command timeout.
    fn queue_limit(&self) -> Duration {
        match self.phase {
            Phase::Opening { .. } | Phase::Handshake if self.last_error.is_none() => {
                self.settings.command_timeout + self.settings.connect_timeout
            }
            _ => self.settings.command_timeout,
        }
    }

    /// When `on_timer` next has something to do.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        let opening = match self.phase {
            Phase::Opening { until, .. } => Some(until),
            _ => None,
        };
        let retry = self.retry_at.filter(|_| {
            self.phase == Phase::Down && (!self.queue.is_empty() || !self.give_backs.is_empty())
        });
        [
            opening,
            self.in_flight.front().map(|s| s.deadline),
            self.queue.front().map(|q| q.queued_at + self.queue_limit()),
            retry,
            self.give_backs.iter().map(|g| g.until).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Bytes to write to the socket.
    pub(crate) fn output(&self) -> &[u8] {
        &self.out
    }

    /// The transport wrote the first `n` bytes of `output()`.
    pub(crate) fn written(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// What happened to requests since the last call.
    pub(crate) fn take_answers(&mut self) -> Vec<Answer> {
        std::mem::take(&mut self.answers)
    }

    pub(crate) fn has_answers(&self) -> bool {
        !self.answers.is_empty()
    }

    /// Nothing queued, in flight or to give back.
    pub(crate) fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_empty() && self.give_backs.is_empty()
    }

    /// Fails everything with a closed error; nothing more is sent.
    pub(crate) fn close(&mut self, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        let err = EngineError::closed();
        for sent in std::mem::take(&mut self.in_flight) {
            self.lose(sent, &err, now, false);
        }
        self.fail_queued(&err);
        self.give_backs.clear();
        self.out.clear();
        self.phase = Phase::Closed;
    }

    fn up(&mut self, now: Instant) {
        self.notices.push(Notice::Opened {
            target: self.settings.target.clone(),
            again: self.ups > 0,
        });
        self.ups = self.ups.saturating_add(1);
        self.phase = Phase::Up;
        self.last_error = None;
        self.retry_at = None;
        for give_back in std::mem::take(&mut self.give_backs) {
            if give_back.until > now {
                self.write(Purpose::Internal, give_back.request, now);
            }
        }
        self.pump(now);
    }

    /// Writes queued requests while the socket is up and in-flight room allows.
    fn pump(&mut self, now: Instant) {
        if self.phase != Phase::Up {
            return;
        }
        while self.in_flight.len() < self.settings.max_in_flight {
            let Some(queued) = self.queue.pop_front() else {
                break;
            };
            if queued.asking {
                // Nothing may come between ASKING and its command: the script goes as EVAL.
                Request::Asking.encode(&mut self.out, false);
                self.push_in_flight(Purpose::Internal, Request::Asking, now);
                queued.request.encode(&mut self.out, true);
                self.push_in_flight(Purpose::Call(queued.tag), queued.request, now);
            } else {
                self.write(Purpose::Call(queued.tag), queued.request, now);
            }
        }
    }

    fn write(&mut self, purpose: Purpose, request: Request, now: Instant) {
        if self.eval_only {
            request.encode(&mut self.out, true);
            return self.push_in_flight(purpose, request, now);
        }
        if let Some(script) = request.script()
            && self.scripts & script.bit() == 0
        {
            self.scripts |= script.bit();
            self.write(Purpose::Internal, Request::LoadScript(script), now);
        }
        request.encode(&mut self.out, false);
        self.push_in_flight(purpose, request, now);
    }

    fn push_in_flight(&mut self, purpose: Purpose, request: Request, now: Instant) {
        let mut deadline = now + self.settings.command_timeout;
        if let Request::Wait { timeout_ms, .. } = &request {
            deadline += Duration::from_millis(*timeout_ms);
        }
        if !self.confirmed {
            deadline = deadline.min(self.opened_at + self.settings.connect_timeout);
        }
        self.in_flight.push_back(Sent {
            purpose,
            request,
            sent_at: now,
            deadline,
        });
    }

    fn answer(&mut self, mut sent: Sent, value: Value, now: Instant) {
        let target = self.settings.target.clone();
        if let Value::ServerError(err) = &value {
            let code = err.code().to_owned();
            if code == "NOSCRIPT"
                && let Some(script) = sent.request.script()
            {
                // The server lost its script cache under this socket: send the script itself.
                if self.scripts & script.bit() != 0 {
                    self.notices.push(Notice::ScriptReloaded {
                        target: self.settings.target.clone(),
                    });
                }
                self.scripts &= !script.bit();
                if let Some(publish) = sent.request.publish_flag() {
                    // A hand-over release re-sent runs after the waiter's attempt that was to
                    // follow it: made in the open, it wakes that waiter (and any other).
                    *publish = true;
                }
                sent.request.encode(&mut self.out, true);
                self.push_in_flight(sent.purpose, sent.request, now);
                return;
            }
            let redirected_tag = match (&sent.purpose, &sent.request) {
                (Purpose::Call(tag), _) => Some(*tag),
                // A give-back whose slot moved: the core sends it on.
                (Purpose::Internal, request) if request.is_release() => Some(UNOWNED),
                _ => None,
            };
            if let Some((ask, slot, host, port)) = redirect(&code, err.details())
                && let Some(tag) = redirected_tag
            {
                self.answers.push(Answer {
                    tag,
                    request: sent.request,
                    outcome: Answered::Redirected {
                        ask,
                        slot,
                        host,
                        port,
                    },
                    sent_at: Some(sent.sent_at),
                });
                return;
            }
            let error = error::server_error(&code, err.details(), &target);
            match sent.purpose {
                Purpose::Call(tag) => {
                    // A replica refused the write, so it did not run: a release is sent again
                    // on the next socket, to the master (else the lock stays for its ttl).
                    let again = (code == "READONLY")
                        .then(|| sent.request.resent_release())
                        .flatten();
                    self.answers.push(Answer {
                        tag,
                        request: sent.request,
                        outcome: Answered::Failed {
                            error,
                            code: Some(code.clone()),
                        },
                        sent_at: Some(sent.sent_at),
                    });
                    if code == "READONLY" {
                        // This server became a replica (a failover): find the master again.
                        let err = error::connection_failed(
                            &target,
                            "the server is a replica now (READONLY)",
                        );
                        self.broken(err, now);
                        self.retry_at = None;
                        if let Some(again) = again {
                            self.give_back(again, now + self.settings.command_timeout * 10);
                        }
                    }
                }
                Purpose::Handshake => self.handshake_failed(error, now),
                Purpose::Internal if code == "READONLY" && sent.request.is_release() => {
                    // A give-back a demoted master refused did not run: to the master, next.
                    let err =
                        error::connection_failed(&target, "the server is a replica now (READONLY)");
                    self.broken(err, now);
                    self.retry_at = None;
                    self.give_back(sent.request, now + self.settings.command_timeout * 10);
                }
                Purpose::Internal => {
                    if let Request::LoadScript(_) = sent.request {
                        // SCRIPT LOAD refused (an ACL, a proxy): send every script itself from
                        // now on, so calls never take the NOSCRIPT detour (and keep their order).
                        self.eval_only = true;
                    }
                }
            }
            return;
        }
        let reply = sent.request.interpret(value);
        match sent.purpose {
            Purpose::Call(tag) => {
                let (outcome, out_of_step) = match reply {
                    Ok(reply) => (Answered::Reply(reply), false),
                    Err(why) => {
                        let err = EngineError::new(
                            ErrorKind::Redis,
                            format!("Redis at {target} gave an {why}"),
                        );
                        (failed(err), true)
                    }
                };
                self.answers.push(Answer {
                    tag,
                    request: sent.request,
                    outcome,
                    sent_at: Some(sent.sent_at),
                });
                if out_of_step {
                    // A reply of the wrong shape: replies and requests may be out of step (a
                    // reply nobody asked for came first), so none that follow can be trusted.
                    let err = error::connection_failed(&target, "a reply did not fit its request");
                    self.broken(err, now);
                }
            }
            Purpose::Handshake => match reply {
                Ok(Reply::Master(false)) => {
                    let err = EngineError::new(
                        ErrorKind::Connection,
                        format!("{target} is not a master (a failover may be in progress)"),
                    );
                    self.handshake_failed(err, now);
                }
                Ok(_) => {
                    if !self
                        .in_flight
                        .iter()
                        .any(|s| s.purpose == Purpose::Handshake)
                    {
                        self.up(now);
                    }
                }
                Err(_) => {
                    // Never the reply itself: a peer that echoes would send the AUTH back.
                    let err = error::cannot_connect(
                        &target,
                        "the server answered the handshake with something that is not a Redis reply",
                    );
                    self.handshake_failed(err, now);
                }
            },
            Purpose::Internal => {
                if reply.is_err() {
                    let err = error::connection_failed(&target, "a reply did not fit its request");
                    self.broken(err, now);
                }
            }
        }
    }

    /// AUTH, SELECT or ROLE failed: the socket is dropped. Refused credentials or settings fail
    /// what waits (another socket would fail the same way); anything else is tried again.
    fn handshake_failed(&mut self, err: EngineError, now: Instant) {
        self.drop_socket(&err, now);
        self.failed_attempt(err, now);
    }

    /// Every request that waits unwritten fails with `err`.
    fn fail_queued(&mut self, err: &EngineError) {
        for queued in std::mem::take(&mut self.queue) {
            self.answers.push(Answer {
                tag: queued.tag,
                request: queued.request,
                outcome: failed(err.clone()),
                sent_at: None,
            });
        }
    }

    fn failed_attempt(&mut self, err: EngineError, now: Instant) {
        if matches!(
            err.kind(),
            ErrorKind::Auth | ErrorKind::Config | ErrorKind::Redis
        ) {
            self.fail_queued(&err);
        }
        self.notices.push(Notice::OpenFailed {
            target: self.settings.target.clone(),
            why: err.message().to_owned(),
            retry_in: self.backoff,
        });
        self.retry_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.last_error = Some(err);
    }

    /// The socket is gone: what was in flight fails (acquires are given back later), the
    /// queue waits for the next socket.
    fn broken(&mut self, err: EngineError, now: Instant) {
        let lived = self.confirmed;
        self.drop_socket(&err, now);
        if lived {
            self.notices.push(Notice::Broken {
                target: self.settings.target.clone(),
                why: err.message().to_owned(),
            });
            // It worked until now: open again at once if anything waits.
            self.retry_at = None;
            self.last_error = Some(err);
        } else {
            self.failed_attempt(err, now);
        }
    }

    fn drop_socket(&mut self, err: &EngineError, now: Instant) {
        for sent in std::mem::take(&mut self.in_flight) {
            self.lose(sent, err, now, true);
        }
        self.out.clear();
        self.decoder = Decoder::default();
        self.phase = Phase::Down;
    }

    /// A request in flight whose reply will never come.
    fn lose(&mut self, sent: Sent, err: &EngineError, _now: Instant, give_back: bool) {
        if give_back {
            match (&sent.purpose, &sent.request) {
                (Purpose::Call(_), request) => {
                    if let Some((undo, ttl_ms)) = request.undo() {
                        let until = sent.sent_at + Duration::from_millis(ttl_ms);
                        self.give_back(undo, until);
                    } else if let Some(again) = request.resent_release() {
                        // A release that may not have run: sent again once a socket is open (it
                        // deletes only the caller's own token, so a second run is harmless), so
                        // that the lock does not stay held for the rest of its ttl. Its caller
                        // was told it failed; the lease was no longer tracked anyway.
                        let until = sent.sent_at + self.settings.command_timeout * 10;
                        self.give_back(again, until);
                    }
                }
                (Purpose::Internal, request) if request.is_release() => {
                    // A give-back whose reply never came: it may not have run.
                    let until = sent.sent_at + self.settings.command_timeout * 10;
                    self.give_back(sent.request.clone(), until);
                }
                _ => {}
            }
        }
        if let Purpose::Call(tag) = sent.purpose {
            self.answers.push(Answer {
                tag,
                request: sent.request,
                outcome: failed(err.clone()),
                sent_at: Some(sent.sent_at),
            });
        }
    }
}

fn failed(error: EngineError) -> Answered {
    Answered::Failed { error, code: None }
}

/// `MOVED 3999 127.0.0.1:6381` / `ASK 3999 127.0.0.1:6381`.
fn redirect(code: &str, detail: Option<&str>) -> Option<(bool, u16, String, u16)> {
    let ask = match code {
        "MOVED" => false,
        "ASK" => true,
        _ => return None,
    };
    let mut parts = detail?.split_whitespace();
    let slot: u16 = parts.next()?.parse().ok().filter(|slot| *slot < 16384)?;
    let (host, port) = parts.next()?.rsplit_once(':')?;
    Some((
        ask,
        slot,
        host.trim_matches(['[', ']']).to_owned(),
        port.parse().ok()?,
    ))
}
