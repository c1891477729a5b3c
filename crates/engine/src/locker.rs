//! A `Locker`: the lock API of one Lock over one core, with what runs beside it on the runtime:
//! auto-extension (on a second core of its own, so leases stay alive while the JS thread is
//! blocked), the release subscriber, and behind Sentinel the failover watch.
//!
//! The core's user calls are driven either by the runtime (`Transport::Runtime`) or by a
//! transport of the caller's (`Transport::EventLoop`: the Node binding's libuv lane), which
//! then drains the core's events itself and hands them to `apply`. Either way a call is
//! submitted synchronously, in the order it was made, and every call of the Lock goes down the
//! same connection(s): WAIT (`replicas`) is the one exception, on a connection of its own.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::core::{
    AcquireSpec, Call, CallId, Core, Endpoint, Event, Outcome, ReplicaAck, Topology,
};
use crate::error::{EngineError, EngineResult, ErrorKind};
use crate::leases::{DEFAULT_DRIFT_FACTOR, Leases, LostCallback};
use crate::net::driver::{Driver, lock};
use crate::notice::{Notice, NoticeCallback};
use crate::policy::wait::RetryPolicy;
use crate::subscriber::{Heard, Subscriber};

/// What `acquire` needs to know besides the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcquireOptions {
    pub ttl: Duration,
    pub retry: RetryPolicy,
    /// Extend the lock every `floor(ttl / 2)` until released or lost.
    pub auto_extend: bool,
    /// Watch the lease and report it lost at its deadline even without auto-extension.
    pub watch: bool,
    /// Wait for this many replicas to acknowledge the lock (single master or Sentinel).
    pub replicas: Option<ReplicaAck>,
    /// Stop auto-extending once the lock has been held this long.
    pub max_hold: Option<Duration>,
}

/// A lock this process now holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    pub token: String,
    /// The fencing token: strictly increasing per lock key. `None` when fencing is off.
    pub fence: Option<i64>,
    /// Until when the lock is known to be held (send time + ttl - safety margin).
    pub deadline: Instant,
}

impl Acquired {
    /// How long from now the lock is known to be held (zero once the deadline passed).
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Where the outcomes of calls submitted with `submit` go (from the runtime).
pub type DoneSink = Arc<dyn Fn(Vec<(CallId, Outcome)>) + Send + Sync>;
/// Asks an event-loop transport to drain the core (something changed from the runtime).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// Who drives the core's connections for the Lock's own calls.
#[derive(Clone, Default)]
pub enum Transport {
    /// A tokio task; outcomes of `submit`ted calls go to the sink.
    #[default]
    Runtime,
    RuntimeWithSink(DoneSink),
    /// The caller's own (see the module); `waker` is called when it must drain the core.
    EventLoop(Waker),
}

/// Settings of a `Locker` beyond the deployment.
#[derive(Clone)]
pub struct LockerOptions {
    /// Take fencing tokens on acquire (counters per Cluster slot, see `keys`).
    pub fencing: bool,
    /// What every key of this Locker starts with (ioredis keyPrefix + the Lock's prefix); it
    /// names the fencing counters.
    pub key_prefix: String,
    /// Called once for each tracked lease that is lost (never for a released one).
    pub on_lost: Option<LostCallback>,
    /// Told each auto-extension of a watched lease (its new deadline).
    pub on_extended: Option<crate::leases::ExtendedCallback>,
    /// Told what an operator may want to know (see `notice`).
    pub on_notice: Option<NoticeCallback>,
    /// A semaphore of this many permits per key, not a lock (see `Core::set_semaphore`).
    pub semaphore: Option<u32>,
    /// Read-write locks, not locks (see `Core::set_read_write`); the acquire's spec says which
    /// side.
    pub read_write: bool,
    /// Share of the ttl set aside for clock drift: a lease's deadline is its send time + ttl -
    /// (ttl * drift_factor + 2 ms). Redlock's validity time uses the same margin.
    pub drift_factor: f64,
    /// The runtime for background work; the current one if `None`.
    pub runtime: Option<Handle>,
    pub transport: Transport,
}

impl Default for LockerOptions {
    fn default() -> Self {
        Self {
            fencing: true,
            key_prefix: "lock:".to_owned(),
            on_lost: None,
            on_extended: None,
            on_notice: None,
            semaphore: None,
            read_write: false,
            drift_factor: DEFAULT_DRIFT_FACTOR,
            runtime: None,
            transport: Transport::Runtime,
        }
    }
}

type Responders = Mutex<HashMap<CallId, oneshot::Sender<Outcome>>>;

/// A core on the runtime whose calls are awaited: the Locker's own when its transport is the
/// runtime, and the background one for auto-extension.
pub(crate) struct Awaited {
    core: Arc<Mutex<Core>>,
    driver: OnceLock<Driver>,
    responders: Arc<Responders>,
    next_id: AtomicU64,
}

impl Awaited {
    fn new(core: Core) -> Self {
        Self {
            core: Arc::new(Mutex::new(core)),
            driver: OnceLock::new(),
            responders: Arc::default(),
            next_id: AtomicU64::new(1),
        }
    }

    /// `also`: the Locker whose own calls this core makes (it acts on every event); else
    /// notices go to `notices`, marked as the background's.
    fn start(
        &self,
        runtime: &Handle,
        stop: CancellationToken,
        also: Option<Weak<Inner>>,
        notices: Option<NoticeCallback>,
    ) {
        let responders = Arc::downgrade(&self.responders);
        let driver = Driver::start(
            runtime,
            self.core.clone(),
            stop,
            Box::new(move |events| {
                let done = match also.as_ref().and_then(Weak::upgrade) {
                    Some(inner) => inner.apply(events),
                    None => done_of(events, notices.as_ref()),
                };
                route(&responders, done, None);
            }),
        );
        let _ = self.driver.set(driver);
    }

    fn wake(&self) {
        if let Some(driver) = self.driver.get() {
            driver.wake();
        }
    }

    /// Makes a call now; the future resolves to its outcome.
    pub(crate) fn call(
        &self,
        id: Option<CallId>,
        call: Call,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        let id = id.unwrap_or_else(|| self.next_id.fetch_add(1, Ordering::Relaxed) | (1 << 62));
        let (sender, receiver) = oneshot::channel();
        lock_map(&self.responders).insert(id, sender);
        let stopped = {
            let mut core = lock(&self.core);
            core.call(id, call, Instant::now());
            // Closed: no driver runs any more to hand the (closed) outcome over.
            core.is_closed().then(|| core.take_events())
        };
        match stopped {
            Some(events) => route(
                &Arc::downgrade(&self.responders),
                done_of(events, None),
                None,
            ),
            None => self.wake(),
        }
        async move {
            receiver
                .await
                .unwrap_or_else(|_| Outcome::Failed(EngineError::closed()))
        }
    }

    /// Extends many leases: one call per slot group of at most 256 (see `leases`).
    pub(crate) fn extend_many(
        &self,
        items: Vec<(String, String, Duration)>,
    ) -> impl Future<Output = Vec<EngineResult<bool>>> + Send + 'static {
        let n = items.len();
        let call = self.call(None, Call::ExtendMany { items });
        async move {
            match call.await {
                Outcome::Flags(flags) if flags.len() == n => flags,
                Outcome::Failed(err) => vec![Err(err); n],
                _ => vec![
                    Err(EngineError::new(
                        ErrorKind::Redis,
                        "a reply of the wrong kind"
                    ));
                    n
                ],
            }
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        lock(&self.core).is_cluster()
    }

    fn close(&self) {
        let events = {
            let mut core = lock(&self.core);
            core.close(Instant::now());
            core.take_events()
        };
        route(
            &Arc::downgrade(&self.responders),
            done_of(events, None),
            None,
        );
    }
}

/// The outcomes among `events`; their notices go to `notices` (as the background's).
fn done_of(events: Vec<Event>, notices: Option<&NoticeCallback>) -> Vec<(CallId, Outcome)> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Done(id, outcome) => Some((id, outcome)),
            Event::Notice(notice) => {
                if let Some(notices) = notices {
                    notices(notice, true);
                }
                None
            }
            _ => None,
        })
        .collect()
}

fn lock_map<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Outcomes to their awaiting futures, the rest to the sink.
fn route(responders: &Weak<Responders>, done: Vec<(CallId, Outcome)>, sink: Option<&DoneSink>) {
    if done.is_empty() {
        return;
    }
    let mut rest = Vec::new();
    match responders.upgrade() {
        Some(responders) => {
            let mut map = lock_map(&responders);
            for (id, outcome) in done {
                match map.remove(&id) {
                    Some(sender) => {
                        let _ = sender.send(outcome);
                    }
                    None => rest.push((id, outcome)),
                }
            }
        }
        None => rest = done,
    }
    if let Some(sink) = sink
        && !rest.is_empty()
    {
        sink(rest);
    }
}

/// On a cluster, the subscribers on the masters serving watched keys. A release is published
/// on its key's master; heard there, it needs no relay over the cluster bus, which can take many
/// milliseconds (seen here on a new cluster: 25 ms), long enough for the releasing process's own
/// waiter to take every turn.
#[derive(Default)]
struct Homes {
    /// Subscriber per master (`ServerConfig::target`), made when a key there is first watched;
    /// each holds a connection only while it has watchers.
    by_target: HashMap<String, Subscriber>,
    /// Per key, the master each of its watchers subscribed on (in watch order).
    watched: HashMap<String, std::collections::VecDeque<String>>,
}

struct Inner {
    homes: Mutex<Homes>,
    main: Awaited,
    transport: Transport,
    background: Arc<Awaited>,
    leases: Leases,
    subscriber: Subscriber,
    sentinel: Option<Arc<crate::sentinel::SentinelConfig>>,
    sentinel_watch: OnceLock<()>,
    runtime: Handle,
    closed: CancellationToken,
    fencing: bool,
    target: String,
    on_notice: Option<NoticeCallback>,
}

/// The lock operations of one Lock.
///
/// Creating a `Locker` does no I/O; the first operation connects.
pub struct Locker {
    inner: Arc<Inner>,
}

impl Locker {
    pub fn new(topology: impl Into<Topology>, options: LockerOptions) -> EngineResult<Self> {
        let topology = topology.into();
        let runtime = match options.runtime {
            Some(runtime) => runtime,
            None => Handle::try_current().map_err(|_| {
                EngineError::new(ErrorKind::Config, "a Locker needs a tokio runtime")
            })?,
        };
        let now = Instant::now();
        let fencing = options.fencing.then(|| options.key_prefix.clone());
        let mut core = Core::new(&topology, fencing.clone(), options.drift_factor, now)?;
        let mut background_core = Core::new(&topology, fencing, options.drift_factor, now)?;
        if let Some(permits) = options.semaphore {
            core.set_semaphore(permits)?;
            background_core.set_semaphore(permits)?;
        }
        if options.read_write {
            core.set_read_write()?;
            background_core.set_read_write()?;
        }
        let background = Arc::new(Awaited::new(background_core));
        let sources: Vec<Endpoint> = (0..core.conn_count())
            .map(|i| core.endpoint(i).clone())
            .collect();
        let timeouts = match &topology {
            Topology::Single(c) => (c.connect_timeout, c.command_timeout),
            Topology::Sentinel(s) => (s.master.connect_timeout, s.master.command_timeout),
            Topology::Cluster(n) | Topology::Redlock(n) => {
                (n[0].connect_timeout, n[0].command_timeout)
            }
        };
        let target = match &topology {
            Topology::Single(config) => config.target(),
            Topology::Sentinel(sentinel) => sentinel.target(),
            Topology::Cluster(nodes) => format!(
                "cluster {}",
                nodes
                    .iter()
                    .map(|n| n.target())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Topology::Redlock(nodes) => format!(
                "Redlock over {} masters ({})",
                nodes.len(),
                nodes
                    .iter()
                    .map(|n| n.target())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let sentinel = match &topology {
            Topology::Sentinel(s) => Some(Arc::new(s.clone())),
            _ => None,
        };
        let closed = CancellationToken::new();
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let listener_owner = weak.clone();
            let subscriber = Subscriber::new(
                sources,
                runtime.clone(),
                closed.clone(),
                Arc::new(move |heard| {
                    if let Some(inner) = listener_owner.upgrade() {
                        let now = Instant::now();
                        inner.touch(|core| match heard {
                            Heard::Released(key) => core.release_heard(key, now),
                            Heard::Subscribed => core.release_heard_all(now),
                        });
                    }
                }),
                timeouts,
            );
            Inner {
                homes: Mutex::default(),
                leases: Leases::new(
                    runtime.clone(),
                    background.clone(),
                    closed.clone(),
                    options.on_lost,
                    options.on_extended,
                    options.on_notice.clone(),
                    options.drift_factor,
                ),
                main: Awaited::new(core),
                transport: options.transport,
                background,
                subscriber,
                sentinel,
                sentinel_watch: OnceLock::new(),
                runtime: runtime.clone(),
                closed,
                fencing: options.fencing && options.semaphore.is_none() && !options.read_write,
                target,
                on_notice: options.on_notice.clone(),
            }
        });
        if !matches!(inner.transport, Transport::EventLoop(_)) {
            inner.main.start(
                &runtime,
                inner.closed.clone(),
                Some(Arc::downgrade(&inner)),
                None,
            );
        }
        inner.background.start(
            &runtime,
            inner.closed.clone(),
            None,
            inner.on_notice.clone(),
        );
        Ok(Self { inner })
    }

    /// A fresh id for `submit`.
    pub fn next_call_id(&self) -> CallId {
        self.inner.main.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes a call now. With the runtime transport its outcome goes to the sink; with an
    /// event-loop transport it comes out of the core, which the caller drains.
    pub fn submit(&self, id: CallId, call: Call) {
        let inner = &self.inner;
        match &call {
            Call::Release { key, token } => inner.leases.forget(key, token),
            Call::ReleaseAll { keys, token } => {
                if let Some(key) = keys.first() {
                    inner.leases.forget(key, token);
                }
            }
            _ => {}
        }
        inner.watch_sentinel();
        // The event loop drains the core itself; on the runtime, a closed core has no driver
        // any more to hand the (closed) outcome over.
        let drains_itself = matches!(inner.transport, Transport::EventLoop(_));
        let stopped = {
            let mut core = lock(&inner.main.core);
            core.call(id, call, Instant::now());
            (core.is_closed() && !drains_itself).then(|| core.take_events())
        };
        match stopped {
            Some(events) => {
                let done = inner.apply(events);
                route(&Arc::downgrade(&inner.main.responders), done, None);
            }
            None => inner.main.wake(),
        }
    }

    /// Stops a waiting acquire (it ends with a cancelled error). `false` if it was not waiting.
    pub fn cancel(&self, id: CallId) -> bool {
        let found = lock(&self.inner.main.core).cancel(id, Instant::now());
        self.inner.main.wake();
        found
    }

    /// The core, for an event-loop transport.
    pub fn core(&self) -> &Arc<Mutex<Core>> {
        &self.inner.main.core
    }

    /// Acts on what the core said (leases to track, extends, keys to listen on) and returns the
    /// outcomes of calls, for an event-loop transport to settle.
    pub fn apply(&self, events: Vec<Event>) -> Vec<(CallId, Outcome)> {
        self.inner.apply(events)
    }

    pub fn runtime(&self) -> &Handle {
        &self.inner.runtime
    }

    /// Takes the lock at `key`, waiting as the policy says.
    ///
    /// `None` when every attempt found the lock held or the wait timed out; an error with kind
    /// `Closed` if the Locker closed, or `Cancelled` when `cancel` fired while waiting.
    pub fn acquire(
        &self,
        key: &str,
        options: AcquireOptions,
        cancel: Option<&CancellationToken>,
    ) -> impl Future<Output = EngineResult<Option<Acquired>>> + Send + 'static {
        let id = self.next_call_id();
        let retry = options.retry;
        let waits = retry != RetryPolicy::ONCE;
        let call = Call::Acquire {
            spec: AcquireSpec {
                key: key.to_owned(),
                ttl: options.ttl,
                auto_extend: options.auto_extend,
                watch: options.watch,
                replicas: options.replicas,
                max_hold: options.max_hold,
                write: false,
                also: Vec::new(),
            },
            retry: waits.then_some(retry),
        };
        self.inner.watch_sentinel();
        let outcome = self.inner.main.call(Some(id), call);
        let cancel = cancel.cloned();
        let inner = Arc::downgrade(&self.inner);
        async move {
            let outcome = match cancel {
                None => outcome.await,
                Some(cancel) => {
                    tokio::pin!(outcome);
                    tokio::select! {
                        outcome = &mut outcome => outcome,
                        _ = cancel.cancelled() => {
                            if let Some(inner) = inner.upgrade() {
                                lock(&inner.main.core).cancel(id, Instant::now());
                                inner.main.wake();
                            }
                            outcome.await
                        }
                    }
                }
            };
            match outcome {
                Outcome::Granted(grant) => Ok(Some(Acquired {
                    token: grant.token,
                    fence: grant.fence,
                    deadline: grant.deadline,
                })),
                Outcome::Refused { .. } => Ok(None),
                Outcome::Failed(err) => Err(err),
                _ => Err(EngineError::new(
                    ErrorKind::Redis,
                    "a reply of the wrong kind",
                )),
            }
        }
    }

    /// Deletes the lock if `token` still owns it, and wakes its waiters; stops tracking first.
    pub fn release(
        &self,
        key: &str,
        token: &str,
    ) -> impl Future<Output = EngineResult<bool>> + Send + 'static {
        self.inner.leases.forget(key, token);
        self.flag(Call::Release {
            key: key.to_owned(),
            token: token.to_owned(),
        })
    }

    /// Sets the lock's TTL to `ttl` if `token` still owns it. Never re-creates an expired key.
    pub fn extend(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> impl Future<Output = EngineResult<bool>> + Send + 'static {
        self.flag(Call::Extend {
            key: key.to_owned(),
            token: token.to_owned(),
            ttl,
        })
    }

    /// Whether anybody holds the lock at `key`.
    pub fn is_locked(
        &self,
        key: &str,
    ) -> impl Future<Output = EngineResult<bool>> + Send + 'static {
        self.flag(Call::Exists {
            key: key.to_owned(),
        })
    }

    fn flag(&self, call: Call) -> impl Future<Output = EngineResult<bool>> + Send + 'static {
        self.inner.watch_sentinel();
        let outcome = self.inner.main.call(None, call);
        async move {
            match outcome.await {
                Outcome::Flag(flag) => Ok(flag),
                Outcome::Failed(err) => Err(err),
                _ => Err(EngineError::new(
                    ErrorKind::Redis,
                    "a reply of the wrong kind",
                )),
            }
        }
    }

    /// Stops auto-extending and watching the lease (`release` does this first too).
    pub fn stop_tracking(&self, key: &str, token: &str) {
        self.inner.leases.forget(key, token);
    }

    /// The tracked lease's current deadline (moves with each successful extend).
    pub fn deadline(&self, token: &str) -> Option<Instant> {
        self.inner.leases.deadline(token)
    }

    /// How long from now the tracked lease is known to be held; `None` if not tracked.
    pub fn time_left(&self, token: &str) -> Option<Duration> {
        self.deadline(token)
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }

    /// How many leases are tracked, and how many of those are auto-extended.
    pub fn tracked(&self) -> (usize, usize) {
        self.inner.leases.counts()
    }

    /// What messages call the deployment (`host:port`, a socket path, a cluster, ...).
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    pub fn fencing(&self) -> bool {
        self.inner.fencing
    }

    pub fn is_redlock(&self) -> bool {
        lock(&self.inner.main.core).is_redlock()
    }

    /// Whether every Redlock acquire reports how each master voted (`Notice::Quorum`); by
    /// default only those where a master failed or did not answer do.
    pub fn set_votes_wanted(&self, wanted: bool) {
        lock(&self.inner.main.core).set_votes_wanted(wanted);
    }

    /// Stops auto-extension, tracking and waiting, and drops the connections; pending calls
    /// fail with a closed error. Locks still held expire at their TTL. Idempotent.
    pub fn close(&self) {
        self.inner.close();
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }
}

impl Inner {
    fn lock_homes(&self) -> std::sync::MutexGuard<'_, Homes> {
        self.homes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One more waiter listens for releases of `key`: on its home master if it has one (a
    /// cluster), else on the Locker's subscriber.
    fn watch(&self, key: &str, home: Option<Arc<crate::config::ServerConfig>>) {
        let Some(home) = home else {
            return self.subscriber.watch(key);
        };
        let target = home.target();
        let mut homes = self.lock_homes();
        homes
            .by_target
            .entry(target.clone())
            .or_insert_with(|| self.subscriber.sibling(Endpoint::Server(home)))
            .watch(key);
        homes
            .watched
            .entry(key.to_owned())
            .or_default()
            .push_back(target);
    }

    /// One waiter of `key` stopped listening.
    fn unwatch(&self, key: &str) {
        let mut homes = self.lock_homes();
        let mut target = None;
        if let Some(queue) = homes.watched.get_mut(key) {
            target = queue.pop_front();
            if queue.is_empty() {
                homes.watched.remove(key);
            }
        }
        match target.and_then(|target| homes.by_target.get(&target)) {
            Some(subscriber) => subscriber.unwatch(key),
            None => {
                drop(homes);
                self.subscriber.unwatch(key);
            }
        }
    }

    fn apply(&self, events: Vec<Event>) -> Vec<(CallId, Outcome)> {
        let mut done = Vec::new();
        for event in events {
            match event {
                Event::Done(id, outcome) => {
                    if let Outcome::Granted(grant) = &outcome
                        && (grant.auto_extend || grant.watch)
                        && !self.closed.is_cancelled()
                    {
                        self.leases.track(grant);
                    }
                    done.push((id, outcome));
                }
                Event::Extended {
                    token,
                    sent_at,
                    ttl,
                } => self.leases.extended(&token, sent_at, ttl),
                Event::Watch { key, home } => self.watch(&key, home),
                Event::Unwatch(key) => self.unwatch(&key),
                Event::Notice(notice) => {
                    if let Some(on_notice) = &self.on_notice {
                        on_notice(notice, false);
                    }
                }
            }
        }
        match &self.transport {
            Transport::RuntimeWithSink(sink) => {
                route(&Arc::downgrade(&self.main.responders), done, Some(sink));
                Vec::new()
            }
            _ => done,
        }
    }

    /// Changes the core from the runtime side, then has its transport act on it.
    fn touch(&self, change: impl FnOnce(&mut Core)) {
        change(&mut lock(&self.main.core));
        match &self.transport {
            Transport::EventLoop(waker) => waker(),
            _ => self.main.wake(),
        }
    }

    /// Behind Sentinel: on the first call, start listening for `+switch-master`.
    fn watch_sentinel(self: &Arc<Self>) {
        let Some(sentinel) = &self.sentinel else {
            return;
        };
        self.sentinel_watch.get_or_init(|| {
            let weak = Arc::downgrade(self);
            self.runtime.spawn(crate::sentinel::watch_switches(
                sentinel.clone(),
                move |switched| {
                    let Some(inner) = weak.upgrade().filter(|i| !i.closed.is_cancelled()) else {
                        return false;
                    };
                    if switched {
                        if let Some(on_notice) = &inner.on_notice {
                            on_notice(
                                Notice::MasterSwitched {
                                    target: inner.target.clone(),
                                },
                                false,
                            );
                        }
                        let now = Instant::now();
                        let why = "the sentinels announced a new master";
                        inner.touch(|core| core.reconnect_all(why, now));
                        let mut background = lock(&inner.background.core);
                        background.reconnect_all(why, now);
                        drop(background);
                        inner.background.wake();
                    }
                    true
                },
            ));
        });
    }

    fn close(&self) {
        if self.closed.is_cancelled() {
            return;
        }
        self.closed.cancel();
        self.background.close();
        match &self.transport {
            Transport::EventLoop(waker) => {
                lock(&self.main.core).close(Instant::now());
                waker();
            }
            _ => {
                let events = {
                    let mut core = lock(&self.main.core);
                    core.close(Instant::now());
                    core.take_events()
                };
                let done = self.apply(events);
                route(&Arc::downgrade(&self.main.responders), done, None);
            }
        }
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        self.close();
    }
}
