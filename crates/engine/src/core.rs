//! The lock engine without I/O: the calls of one Lock over its connections to one server, a
//! Sentinel-found master, Redlock's independent masters or a Redis Cluster's masters.
//!
//! Every transport drives this one core, on the JS thread (the event loop) or on the runtime:
//! it submits calls, hands over what its sockets did (opened, bytes, broke) and the time, and
//! acts on what comes out: bytes to write per connection, sockets wanted, the next time it
//! needs the clock, and events (a call's outcome, a lease extended, a key to listen on). The
//! clock is always passed in.
//!
//! What lives here, once each: the meaning of replies (via `proto`), Redlock's tally with its
//! validity cut-off (enforced by the timer while the answers come, not only afterwards), the
//! waiting policy (`policy::wait`: hand-over, no barging, fairness), giving back grants nobody
//! will hold, and cluster routing (slot map, MOVED/ASK, retries on TRYAGAIN/CLUSTERDOWN).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{ServerAddress, ServerConfig};
use crate::error::{EngineError, EngineResult, ErrorKind};
use crate::keys;
use crate::leases::deadline_at;
use crate::notice::{Notice, Vote, VoteAnswer};
use crate::policy::tally::Tally;
use crate::policy::wait::{RetryPolicy, Start, Turn, WaitPlan, WaitQueue};
use crate::proto::conn::{Answer, Answered, Conn, ConnSettings, Tag, UNOWNED};
use crate::proto::request::{ExtendItem, Family, Reply, Request, SlotRange};
use crate::sentinel::SentinelConfig;
use crate::token::new_token;

/// Identifies a call; chosen by whoever submits it.
pub type CallId = u64;

/// Replica acknowledgement asked of an acquire (single server or Sentinel only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAck {
    pub count: u32,
    pub timeout: Duration,
}

/// The deployment a `Locker` talks to.
#[derive(Debug, Clone)]
pub enum Topology {
    /// One Redis server.
    Single(ServerConfig),
    /// The master a group of sentinels names, followed across failovers.
    Sentinel(SentinelConfig),
    /// A Redis Cluster, from its startup nodes.
    Cluster(Vec<ServerConfig>),
    /// Redlock over independent masters.
    Redlock(Vec<ServerConfig>),
}

impl From<ServerConfig> for Topology {
    fn from(config: ServerConfig) -> Self {
        Topology::Single(config)
    }
}

/// Where a connection's socket goes; the transport opens it (see `net::open`).
#[derive(Debug, Clone)]
pub enum Endpoint {
    Server(Arc<ServerConfig>),
    /// Whichever master the sentinels name when the socket is opened.
    Sentinel(Arc<SentinelConfig>),
}

impl Endpoint {
    /// How long opening a socket may take: the connect timeout, and behind Sentinel first the
    /// sentinels' own limits.
    pub fn open_limit(&self) -> Duration {
        match self {
            Endpoint::Server(config) => config.connect_timeout,
            Endpoint::Sentinel(sentinel) => {
                sentinel.master.connect_timeout
                    + sentinel
                        .sentinels
                        .iter()
                        .map(|s| s.connect_timeout + s.command_timeout)
                        .sum::<Duration>()
            }
        }
    }

    /// Whether a transport without TLS can open it (a plain server or Sentinel-found master).
    pub fn is_plain(&self) -> bool {
        match self {
            Endpoint::Server(config) => config.tls.is_none(),
            Endpoint::Sentinel(sentinel) => sentinel.master.tls.is_none(),
        }
    }
}

/// What an acquire asks for.
#[derive(Debug, Clone)]
pub struct AcquireSpec {
    pub key: String,
    pub ttl: Duration,
    /// Extend the lock every `floor(ttl / 2)` until released or lost.
    pub auto_extend: bool,
    /// Report the lease lost at its deadline even without auto-extension (`acquireLease`).
    pub watch: bool,
    pub replicas: Option<ReplicaAck>,
    /// `maxHoldTime`: auto-extension stops once the lock has been held this long.
    pub max_hold: Option<Duration>,
    /// A read-write lock's write side (else its read side); ignored by other Locks.
    pub write: bool,
    /// A lock over several resources: its other keys, all taken with `key` or none (a Lock's
    /// only; `key` is the first of them in the caller's order).
    pub also: Vec<String>,
}

/// A call of the lock API.
#[derive(Debug, Clone)]
pub enum Call {
    /// One attempt (`retry` None), or waiting as the policy says.
    Acquire {
        spec: AcquireSpec,
        retry: Option<RetryPolicy>,
    },
    Release {
        key: String,
        token: String,
    },
    Extend {
        key: String,
        token: String,
        ttl: Duration,
    },
    Exists {
        key: String,
    },
    /// Semaphore: how many permits are held (a lock: 1 or 0).
    Count {
        key: String,
    },
    /// Extends many leases in one script call (auto-extension). On a cluster all keys must
    /// share a slot.
    ExtendMany {
        items: Vec<(String, String, Duration)>,
    },
    /// Releases a lock over several resources: `Flag(true)` if every key held the token.
    ReleaseAll {
        keys: Vec<String>,
        token: String,
    },
    /// Extends a lock over several resources: `Flag(true)` if every key held the token.
    ExtendAll {
        keys: Vec<String>,
        token: String,
        ttl: Duration,
    },
}

/// A lock taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub key: String,
    /// A lock over several resources: its other keys.
    pub also: Vec<String>,
    pub token: String,
    /// The fencing token: strictly increasing per lock key. `None` when fencing is off.
    pub fence: Option<i64>,
    pub ttl: Duration,
    /// When its `SET` was sent (its TTL started no earlier).
    pub sent_at: Instant,
    /// Until when the lock is known to be held: send time + ttl - safety margin.
    pub deadline: Instant,
    pub auto_extend: bool,
    pub watch: bool,
    pub max_hold: Option<Duration>,
    /// Attempts sent to take it (1 for a single attempt; a waiter's count).
    pub attempts: u32,
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Granted(Grant),
    /// Held by someone else (after every attempt the policy allowed; `attempts` were sent, none
    /// when a waiter gave up before its turn came).
    Refused {
        attempts: u32,
    },
    Flag(bool),
    Count(i64),
    /// `ExtendMany`: one result per lease.
    Flags(Vec<EngineResult<bool>>),
    Failed(EngineError),
}

/// What the core tells whoever drives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Done(CallId, Outcome),
    /// An extend of a tracked lease succeeded: its deadline moves.
    Extended {
        token: String,
        sent_at: Instant,
        ttl: Duration,
    },
    /// Start listening for releases of a key, for one waiter; on a cluster, `home` is the
    /// master serving its slot (where its releases are published), if the slot map knows it.
    Watch {
        key: String,
        home: Option<Arc<ServerConfig>>,
    },
    /// Stop listening for releases of a key, for one waiter.
    Unwatch(String),
    /// Something for the operator (see `notice`).
    Notice(Notice),
}

/// Most tries of one cluster request across redirections and failover.
const CLUSTER_TRIES: u8 = 5;
/// A waiting writer's mark outlives the gap to its next try by this much (the try's round
/// trip, a busy event loop), so it never lapses while the writer still waits.
const WRITER_MARK_SLACK: Duration = Duration::from_millis(250);
/// Pause before trying again after TRYAGAIN, CLUSTERDOWN, LOADING or a missing slot map.
const CLUSTER_RETRY: Duration = Duration::from_millis(100);
/// Most cluster nodes a Lock keeps connections to (Redis Cluster's own recommended maximum).
const MAX_CLUSTER_NODES: usize = 1000;
/// Slot map refreshes, at most one per this long.
const REFRESH_EVERY: Duration = Duration::from_millis(200);
/// The tag of the slot map's own requests (an op id no call gets).
const REFRESH_OP: u64 = 0;
const MEMBER_BITS: u32 = 16;

fn tag(op: u64, member: usize) -> Tag {
    (op << MEMBER_BITS) | member as u64
}

enum Owner {
    User(CallId),
    Waiter(CallId),
    /// Nobody waits: a give-back.
    Nobody,
}

enum OpKind {
    Acquire {
        spec: AcquireSpec,
        token: String,
    },
    /// SET then WAIT on the connection kept for it.
    Replicated {
        spec: AcquireSpec,
        token: String,
        ack: ReplicaAck,
        conn: usize,
        granted: Option<(Option<i64>, Instant)>,
        refused: bool,
    },
    Release {
        key: String,
        /// Made in the open with waiters here: they get their turn (see `after_open_release`).
        open: bool,
    },
    Extend {
        token: String,
        ttl: Duration,
    },
    Exists,
    Count,
    ExtendMany {
        n: usize,
    },
    /// A lock over several resources, one slot's keys at a time in slot order (`groups`);
    /// `next` is the group this op sent. Refused or failed: the groups before it go back.
    AcquireAll {
        spec: AcquireSpec,
        token: String,
        groups: Vec<Vec<String>>,
        next: usize,
        /// When the first group was sent: the lease's TTL counts from then.
        first_sent: Option<Instant>,
    },
    /// ReleaseAll / ExtendAll, one group at a time; `done`: keys released, or every group
    /// extended so far.
    EachGroup {
        token: String,
        /// `Some(ttl)`: an extend; `None`: a release.
        ttl: Option<Duration>,
        groups: Vec<Vec<String>>,
        next: usize,
        done: usize,
        first_sent: Option<Instant>,
        /// A rollback: the outcome its owner gets once it is done (whatever it found).
        then: Option<Box<Outcome>>,
        /// The first group that failed (a release goes on with the others).
        error: Option<EngineError>,
    },
}

struct Op {
    owner: Owner,
    kind: OpKind,
    started: Instant,
    /// Redlock: one tally of all masters; otherwise `None` (one request out).
    quorum: Option<Box<QuorumState>>,
    /// Redlock acquire: its validity time (an entry in `dues`).
    valid_until: Option<Instant>,
    /// Cluster: tries so far and the last moment to try again.
    tries: u8,
    give_up_at: Instant,
}

/// A Redlock op's answers so far. The op ends at its decision: a refused acquire is then given
/// back on every master that granted it or has not answered yet (on the same connection, behind
/// its attempt, so never before it).
struct QuorumState {
    tally: Tally<Option<i64>>,
    /// `ExtendMany`: a tally per lease.
    items: Vec<Tally<()>>,
    /// Per master: answered, and whether it granted.
    answered: Vec<bool>,
    granted: Vec<bool>,
    /// Acquire: each master's answer, for `Notice::Quorum`.
    votes: Vec<VoteAnswer>,
    /// Most subscribers told by any master (an open release).
    told: i64,
}

enum Layout {
    Single {
        /// WAIT blocks its connection's pipeline: replicated acquires get a connection of their own.
        replicated: Option<usize>,
    },
    Redlock {
        masters: usize,
    },
    Cluster(Box<ClusterMap>),
}

struct ClusterMap {
    /// Credentials, TLS and timeouts of every node; the address is each node's own.
    template: ServerConfig,
    by_address: HashMap<(String, u16), usize>,
    /// The connection serving each slot, if known.
    slots: Vec<Option<usize>>,
    refreshing: bool,
    last_refresh: Option<Instant>,
    next_seed: usize,
    /// Requests waiting for the slot map.
    parked: Vec<(Tag, Request)>,
    last_error: Option<EngineError>,
}

/// What `Core::next_timer` wakes for besides connections and waiters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// A Redlock acquire's validity runs out.
    Validity(u64),
    /// A cluster request is tried again.
    Retry(u64),
    Refresh,
}

pub struct Core {
    conns: Vec<Conn>,
    endpoints: Vec<Endpoint>,
    layout: Layout,
    ops: HashMap<u64, Op>,
    /// A cluster request waiting to be tried again, by op.
    retries: HashMap<u64, (Tag, Request)>,
    next_op: u64,
    /// Ordered by time; a Redlock acquire's entry goes when it is decided.
    dues: BTreeSet<(Instant, Due)>,
    waits: WaitQueue<CallId, AcquireSpec>,
    /// Keys this Lock is releasing in the open, with waiters here, until the reply: a release
    /// heard meanwhile is its own echo (the reply decides who goes next, see `released_in_open`).
    open_releases: HashMap<String, usize>,
    events: Vec<Event>,
    /// With fencing: the Lock's key prefix (it names the fencing counters, see `keys`).
    fencing: Option<String>,
    drift_factor: f64,
    command_timeout: Duration,
    closed: bool,
    /// Report every Redlock acquire's votes (`Notice::Quorum`), not only those with a failure.
    votes_wanted: bool,
    /// What this core's keys hold: locks, semaphores (of `permits` each) or read-write locks.
    family: Family,
    permits: u32,
}

impl Core {
    /// `fencing`: `Some(key prefix)` to take fences (the prefix names the counters), `None` not to.
    pub fn new(
        topology: &Topology,
        fencing: Option<String>,
        drift_factor: f64,
        now: Instant,
    ) -> EngineResult<Self> {
        let mut conns = Vec::new();
        let mut endpoints = Vec::new();
        let layout = match topology {
            Topology::Single(config) => {
                conns.push(Conn::new(ConnSettings::for_server(config), now));
                endpoints.push(Endpoint::Server(Arc::new(config.clone())));
                Layout::Single { replicated: None }
            }
            Topology::Sentinel(sentinel) => {
                if sentinel.sentinels.is_empty() {
                    return Err(EngineError::new(
                        ErrorKind::Config,
                        "Sentinel mode needs at least one sentinel",
                    ));
                }
                let mut settings = ConnSettings::for_server(&sentinel.master);
                settings.target = sentinel.target();
                settings.check_master = true;
                conns.push(Conn::new(settings, now));
                endpoints.push(Endpoint::Sentinel(Arc::new(sentinel.clone())));
                Layout::Single { replicated: None }
            }
            Topology::Redlock(masters) => {
                if masters.len() < 2 {
                    return Err(EngineError::new(
                        ErrorKind::Config,
                        "Redlock needs at least 2 independent masters (3 or 5 are usual)",
                    ));
                }
                if masters.len() > 64 {
                    return Err(EngineError::new(
                        ErrorKind::Config,
                        "Redlock takes at most 64 masters",
                    ));
                }
                for config in masters {
                    conns.push(Conn::new(ConnSettings::for_server(config), now));
                    endpoints.push(Endpoint::Server(Arc::new(config.clone())));
                }
                Layout::Redlock {
                    masters: masters.len(),
                }
            }
            Topology::Cluster(nodes) => {
                let Some(first) = nodes.first() else {
                    return Err(EngineError::new(
                        ErrorKind::Config,
                        "a cluster needs at least one startup node",
                    ));
                };
                let mut by_address = HashMap::new();
                for config in nodes {
                    if let ServerAddress::Tcp { host, port } = &config.address {
                        by_address.insert((host.clone(), *port), conns.len());
                    }
                    conns.push(Conn::new(ConnSettings::for_server(config), now));
                    endpoints.push(Endpoint::Server(Arc::new(config.clone())));
                }
                Layout::Cluster(Box::new(ClusterMap {
                    template: first.clone(),
                    by_address,
                    slots: vec![None; 16384],
                    refreshing: false,
                    last_refresh: None,
                    next_seed: 0,
                    parked: Vec::new(),
                    last_error: None,
                }))
            }
        };
        let command_timeout = conns[0].settings().command_timeout;
        Ok(Self {
            conns,
            endpoints,
            layout,
            ops: HashMap::new(),
            retries: HashMap::new(),
            next_op: REFRESH_OP + 1,
            dues: BTreeSet::new(),
            waits: WaitQueue::default(),
            open_releases: HashMap::new(),
            events: Vec::new(),
            fencing,
            drift_factor,
            command_timeout,
            closed: false,
            votes_wanted: false,
            family: Family::Lock,
            permits: 1,
        })
    }

    // ---- what transports see -------------------------------------------------------------

    /// How many connections there are (a cluster adds one per master it learns of).
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    pub fn endpoint(&self, conn: usize) -> &Endpoint {
        &self.endpoints[conn]
    }

    /// What messages call connection `conn`'s server.
    pub fn conn_target(&self, conn: usize) -> &str {
        self.conns[conn].target()
    }

    /// Whether connection `conn` wants a socket now.
    pub fn wants_socket(&self, conn: usize, now: Instant) -> bool {
        !self.closed && self.conns[conn].wants_socket(now)
    }

    /// The transport starts opening a socket for `conn`; returns the epoch to report it with.
    pub fn opening(&mut self, conn: usize, now: Instant) -> u64 {
        let limit = self.endpoints[conn].open_limit();
        self.conns[conn].opening(now, limit)
    }

    /// The epoch of the socket `conn` should have (open or opening).
    pub fn live_epoch(&self, conn: usize) -> Option<u64> {
        self.conns[conn].live_epoch()
    }

    /// Whether the socket of `epoch` may be read and written (opened, not being opened).
    pub fn is_open(&self, conn: usize, epoch: u64) -> bool {
        self.conns[conn].is_open(epoch)
    }

    /// The socket of `epoch` opened; `false`: close it, it is not wanted any more.
    pub fn opened(&mut self, conn: usize, epoch: u64, now: Instant) -> bool {
        let kept = self.conns[conn].opened(epoch, now);
        self.process(now);
        kept
    }

    pub fn open_failed(&mut self, conn: usize, epoch: u64, err: EngineError, now: Instant) {
        self.conns[conn].open_failed(epoch, err, now);
        self.cluster_node_trouble(conn, now);
        self.process(now);
    }

    /// Bytes read from the socket of `epoch`.
    pub fn feed(&mut self, conn: usize, epoch: u64, bytes: &[u8], now: Instant) {
        self.conns[conn].feed(epoch, bytes, now);
        self.process(now);
    }

    /// The socket of `epoch` broke or closed.
    pub fn socket_closed(&mut self, conn: usize, epoch: u64, why: &str, now: Instant) {
        self.conns[conn].socket_closed(epoch, why, now);
        self.cluster_node_trouble(conn, now);
        self.process(now);
    }

    /// Bytes to write on `conn`'s socket.
    pub fn output(&self, conn: usize) -> &[u8] {
        self.conns[conn].output()
    }

    pub fn written(&mut self, conn: usize, n: usize) {
        self.conns[conn].written(n);
    }

    /// The next moment `on_timer` has work.
    pub fn next_timer(&mut self) -> Option<Instant> {
        let conns = self.conns.iter().filter_map(Conn::next_timer).min();
        let dues = self.dues.first().map(|(at, _)| *at);
        let waits = self.waits.next_timer();
        [conns, dues, waits].into_iter().flatten().min()
    }

    /// Time passed. Transports read what their sockets hold first.
    pub fn on_timer(&mut self, now: Instant) {
        for conn in &mut self.conns {
            conn.on_timer(now);
        }
        while let Some((at, due)) = self.dues.first().copied() {
            if at > now {
                break;
            }
            self.dues.pop_first();
            match due {
                Due::Validity(op) => self.validity_ran_out(op, now),
                Due::Retry(op) => {
                    if let Some((tag, request)) = self.retries.remove(&op) {
                        self.route(tag, request, now);
                    }
                }
                Due::Refresh => self.refresh_slots(now),
            }
        }
        for id in self.waits.due(now) {
            self.attempt(id, now);
        }
        self.process(now);
    }

    /// What happened since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Whether nothing is pending: no call, no waiter, nothing queued on any connection.
    pub fn is_idle(&self) -> bool {
        self.ops.is_empty() && self.waits.is_empty() && self.conns.iter().all(Conn::is_idle)
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.layout, Layout::Cluster(_))
    }

    /// Makes every call of this core one on a semaphore of `permits` permits per key: a key is
    /// a sorted set of permits (no fences); release, extend and `Exists` act on permits.
    pub fn set_semaphore(&mut self, permits: u32) -> EngineResult<()> {
        if self.is_redlock() {
            return Err(EngineError::new(
                ErrorKind::Unsupported,
                "a Semaphore needs one master (a server, Sentinel or a cluster), not Redlock",
            ));
        }
        self.family = Family::Semaphore;
        self.permits = permits.max(1);
        self.fencing = None;
        Ok(())
    }

    /// Makes every call of this core one on a read-write lock (see `scripts`): an acquire takes
    /// the side its spec's `write` says; release, extend and `Count` act on either side.
    pub fn set_read_write(&mut self) -> EngineResult<()> {
        if self.is_redlock() {
            return Err(EngineError::new(
                ErrorKind::Unsupported,
                "a ReadWriteLock needs one master (a server, Sentinel or a cluster), not Redlock",
            ));
        }
        self.family = Family::ReadWrite;
        self.fencing = None;
        Ok(())
    }

    fn release_request(&self, key: String, token: String, publish: bool) -> Request {
        Request::release_of(self.family, key, token, publish)
    }

    /// Whether every Redlock acquire reports its votes (`Notice::Quorum`); by default only
    /// those where a master failed or did not answer do.
    pub fn set_votes_wanted(&mut self, wanted: bool) {
        self.votes_wanted = wanted;
    }

    pub fn is_redlock(&self) -> bool {
        matches!(self.layout, Layout::Redlock { .. })
    }

    /// The deadline of a lock whose `SET` was sent at `sent_at`.
    pub fn deadline_for(&self, sent_at: Instant, ttl: Duration) -> Instant {
        deadline_at(sent_at + ttl, ttl, self.drift_factor)
    }

    // ---- calls ---------------------------------------------------------------------------

    /// Makes a call. Its outcome comes as `Event::Done(id, ...)`.
    pub fn call(&mut self, id: CallId, call: Call, now: Instant) {
        if self.closed {
            self.events
                .push(Event::Done(id, Outcome::Failed(EngineError::closed())));
            return;
        }
        match call {
            Call::Acquire {
                spec,
                retry: Some(retry),
            } => self.start_waiting(id, spec, retry, now),
            Call::Acquire { spec, retry: None } => self.acquire(Owner::User(id), spec, now),
            Call::Release { key, token } => self.release(Owner::User(id), key, token, now),
            Call::Extend { key, token, ttl } => {
                let (token_sent, ttl_ms) = (token.clone(), ms(ttl));
                let request = match self.family {
                    Family::Lock => Request::Extend {
                        key,
                        token: token_sent,
                        ttl_ms,
                    },
                    Family::Semaphore => Request::SemExtend {
                        key,
                        token: token_sent,
                        ttl_ms,
                    },
                    Family::ReadWrite => Request::RwExtend {
                        key,
                        token: token_sent,
                        ttl_ms,
                    },
                };
                self.start(Owner::User(id), OpKind::Extend { token, ttl }, request, now);
            }
            Call::Exists { key } => {
                let request = self.count_request(key);
                self.start(Owner::User(id), OpKind::Exists, request, now)
            }
            Call::Count { key } => {
                let request = self.count_request(key);
                self.start(Owner::User(id), OpKind::Count, request, now)
            }
            Call::ReleaseAll { keys, token } => {
                let groups = self.groups_of(keys);
                self.each_group(Owner::User(id), token, None, groups, None, now);
            }
            Call::ExtendAll { keys, token, ttl } => {
                let groups = self.groups_of(keys);
                self.each_group(Owner::User(id), token, Some(ttl), groups, None, now);
            }
            Call::ExtendMany { items } => {
                let n = items.len();
                let items = items
                    .into_iter()
                    .map(|(key, token, ttl)| ExtendItem {
                        key,
                        token,
                        ttl_ms: ms(ttl),
                    })
                    .collect();
                let request = match self.family {
                    Family::Lock => Request::ExtendMany { items },
                    Family::Semaphore => Request::SemExtendMany { items },
                    Family::ReadWrite => Request::RwExtendMany { items },
                };
                self.start(Owner::User(id), OpKind::ExtendMany { n }, request, now);
            }
        }
        self.process(now);
    }

    /// What holds `key` now: `Exists` of a lock, the permits or holders of the others.
    fn count_request(&self, key: String) -> Request {
        match self.family {
            Family::Lock => Request::Exists { key },
            Family::Semaphore => Request::SemCount { key },
            Family::ReadWrite => Request::RwCount { key },
        }
    }

    /// Stops a waiting acquire; it ends with a cancelled error. `false` if it was not waiting.
    pub fn cancel(&mut self, id: CallId, now: Instant) -> bool {
        let found = self.finish_waiter(id, Outcome::Failed(EngineError::cancelled()));
        self.process(now);
        found
    }

    /// A release of `key` was heard from Redis: its first idle waiter here tries at once.
    pub fn release_heard(&mut self, key: &str, now: Instant) {
        if self.open_releases.contains_key(key) {
            return;
        }
        if self.family == Family::ReadWrite {
            let idle = self.waits.idle(key);
            for &id in &idle {
                self.attempt(id, now);
            }
            if !idle.is_empty() {
                self.process(now);
            }
        } else if let Some(id) = self.waits.heard(key).or_else(|| {
            self.waits
                .heard_by(|spec| spec.also.iter().any(|k| k == key))
        }) {
            // (The second: a lock over several resources waiting on one that is not its first.)
            self.attempt(id, now);
            self.process(now);
        }
    }

    /// Releases may have gone unheard (the subscriber reconnected): every key's first waiter
    /// tries.
    pub fn release_heard_all(&mut self, now: Instant) {
        for key in self.waits.keys() {
            self.release_heard(&key, now);
        }
    }

    /// Drops every socket (a failover was announced); requests in flight fail, the rest wait.
    pub fn reconnect_all(&mut self, why: &str, now: Instant) {
        for conn in &mut self.conns {
            conn.reconnect(why, now);
        }
        self.process(now);
    }

    /// After a bug (a panic while driving the core): every socket is dropped and every pending
    /// call and waiter fails with `err`, so nothing is left hanging; the core then works on.
    pub fn fail_all(&mut self, err: EngineError, now: Instant) {
        for id in self.waits.ids() {
            self.finish_waiter(id, Outcome::Failed(err.clone()));
        }
        for conn in &mut self.conns {
            conn.reconnect(err.message(), now);
        }
        self.process(now);
        let pending: Vec<u64> = self.ops.keys().copied().collect();
        for op in pending {
            self.fail_op(op, err.clone(), now);
        }
        if let Layout::Cluster(map) = &mut self.layout {
            map.parked.clear();
            map.refreshing = false;
        }
        self.retries.clear();
        self.dues.clear();
        self.open_releases.clear();
    }

    /// Fails every call and waiter with a closed error; nothing more is sent.
    pub fn close(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.closed = true;
        for id in self.waits.ids() {
            self.finish_waiter(id, Outcome::Failed(EngineError::closed()));
        }
        for conn in &mut self.conns {
            conn.close(now);
        }
        if let Layout::Cluster(map) = &mut self.layout {
            map.parked.clear();
        }
        self.process(now);
        let pending: Vec<u64> = self.ops.keys().copied().collect();
        for op in pending {
            self.fail_op(op, EngineError::closed(), now);
        }
        self.retries.clear();
        self.dues.clear();
    }

    // ---- acquiring -----------------------------------------------------------------------

    fn start_waiting(&mut self, id: CallId, spec: AcquireSpec, retry: RetryPolicy, now: Instant) {
        let key = spec.key.clone();
        match self
            .waits
            .join(id, &key, spec, WaitPlan::new(retry, now), now)
        {
            Start::Attempt => self.attempt(id, now),
            Start::WaitUntil(_) => self.watch_keys(id),
            Start::GiveUp => {
                self.waits.remove(id);
                self.events
                    .push(Event::Done(id, Outcome::Refused { attempts: 0 }));
            }
        }
    }

    fn attempt(&mut self, id: CallId, now: Instant) {
        let Some(waiter) = self.waits.get(id) else {
            return;
        };
        if waiter.attempting {
            return;
        }
        let spec = waiter.spec.clone();
        self.waits.attempting(id);
        self.acquire(Owner::Waiter(id), spec, now);
    }

    /// One attempt, with a fresh token: a failed Redlock attempt is given back in the
    /// background, and that must never match a later attempt's grant.
    fn acquire(&mut self, owner: Owner, spec: AcquireSpec, now: Instant) {
        if !spec.also.is_empty() {
            return self.acquire_all(owner, spec, now);
        }
        let token = new_token();
        let request = match self.family {
            Family::Semaphore => Request::SemAcquire {
                key: spec.key.clone(),
                token: token.clone(),
                ttl_ms: ms(spec.ttl),
                permits: self.permits,
            },
            Family::ReadWrite => Request::RwAcquire {
                key: spec.key.clone(),
                token: token.clone(),
                ttl_ms: ms(spec.ttl),
                write: spec.write,
                // A writer that will try again keeps new readers out meanwhile, a little longer
                // than its next try is away (never past its wait timeout); an attempt it would
                // give up after, or a single attempt, marks nothing.
                mark_ms: match owner {
                    Owner::Waiter(id) if spec.write => self
                        .waits
                        .get(id)
                        .and_then(|w| w.waits_on_for(now))
                        .map_or(0, |gap| ms(gap + WRITER_MARK_SLACK)),
                    _ => 0,
                },
            },
            Family::Lock => Request::Acquire {
                key: spec.key.clone(),
                token: token.clone(),
                ttl_ms: ms(spec.ttl),
                fence: self
                    .fencing
                    .as_ref()
                    .map(|prefix| keys::fence_key(&spec.key, prefix)),
            },
        };
        if let Some(ack) = spec.replicas {
            let Layout::Single { replicated } = &mut self.layout else {
                let err = EngineError::new(
                    ErrorKind::Unsupported,
                    "replica acknowledgement is for a single master or Sentinel, not for a cluster or Redlock",
                );
                return self.deliver(owner, Outcome::Failed(err), now);
            };
            let conn = match replicated {
                Some(conn) => *conn,
                None => {
                    let settings = self.conns[0].settings().clone();
                    self.conns.push(Conn::new(settings, now));
                    self.endpoints.push(self.endpoints[0].clone());
                    *replicated = Some(self.conns.len() - 1);
                    self.conns.len() - 1
                }
            };
            let op = self.new_op(
                owner,
                OpKind::Replicated {
                    spec,
                    token,
                    ack,
                    conn,
                    granted: None,
                    refused: false,
                },
                now,
            );
            self.conns[conn].submit(tag(op, 0), request, now);
            let wait = Request::Wait {
                replicas: ack.count,
                timeout_ms: ms(ack.timeout),
            };
            self.conns[conn].submit(tag(op, 1), wait, now);
            return;
        }
        self.start(owner, OpKind::Acquire { spec, token }, request, now);
    }

    // ---- locks over several resources ---------------------------------------------------

    /// The keys of one call in the order they are taken: on a cluster one group per slot, in
    /// slot order (every caller takes overlapping sets in the same order, and rolls back what
    /// it took when a later group is held), elsewhere one group; keys sorted within a group.
    fn groups_of(&self, mut keys: Vec<String>) -> Vec<Vec<String>> {
        keys.sort();
        keys.dedup();
        if keys.is_empty() {
            return Vec::new();
        }
        if !self.is_cluster() {
            return vec![keys];
        }
        let mut by_slot: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
        for key in keys {
            by_slot.entry(keys::slot(&key)).or_default().push(key);
        }
        by_slot.into_values().collect()
    }

    fn acquire_all(&mut self, owner: Owner, spec: AcquireSpec, now: Instant) {
        let refused = if self.family != Family::Lock {
            Some("locks over several resources are for a Lock, not a Semaphore or ReadWriteLock")
        } else if self.is_redlock() {
            Some(
                "locks over several resources need one master (a server, Sentinel or a cluster), not Redlock",
            )
        } else if spec.replicas.is_some() {
            Some("replica acknowledgement is for a lock on one resource")
        } else {
            None
        };
        if let Some(why) = refused {
            let err = EngineError::new(ErrorKind::Unsupported, why);
            return self.deliver(owner, Outcome::Failed(err), now);
        }
        let mut keys = spec.also.clone();
        keys.push(spec.key.clone());
        let groups = self.groups_of(keys);
        self.acquire_group(owner, spec, new_token(), groups, 0, None, now);
    }

    /// Sends group `next` of a lock over several resources.
    #[allow(clippy::too_many_arguments)]
    fn acquire_group(
        &mut self,
        owner: Owner,
        spec: AcquireSpec,
        token: String,
        groups: Vec<Vec<String>>,
        next: usize,
        first_sent: Option<Instant>,
        now: Instant,
    ) {
        let request = Request::AcquireAll {
            keys: groups[next].clone(),
            token: token.clone(),
            ttl_ms: ms(spec.ttl),
        };
        let kind = OpKind::AcquireAll {
            spec,
            token,
            groups,
            next,
            first_sent,
        };
        self.start(owner, kind, request, now);
    }

    /// Starts a ReleaseAll (`ttl` None) or ExtendAll over `groups`, from the first; `then`: a
    /// rollback's outcome, which its owner gets once every group was released.
    fn each_group(
        &mut self,
        owner: Owner,
        token: String,
        ttl: Option<Duration>,
        groups: Vec<Vec<String>>,
        then: Option<Box<Outcome>>,
        now: Instant,
    ) {
        if self.is_redlock() || self.family != Family::Lock {
            let err = EngineError::new(
                ErrorKind::Unsupported,
                "locks over several resources are for a Lock on one master (a server, Sentinel or a cluster)",
            );
            return self.deliver(owner, Outcome::Failed(err), now);
        }
        if groups.is_empty() {
            let outcome = then.map_or(Outcome::Flag(false), |o| *o);
            return self.deliver(owner, outcome, now);
        }
        let request = group_request(&groups[0], &token, ttl);
        let kind = OpKind::EachGroup {
            token,
            ttl,
            groups,
            next: 0,
            done: 0,
            first_sent: None,
            then,
            error: None,
        };
        self.start(owner, kind, request, now);
    }

    /// A group's answer: the next group goes out, or the op ends.
    fn group_answer(&mut self, op: Op, answered: Answered, sent_at: Option<Instant>, now: Instant) {
        let owner = op.owner;
        match op.kind {
            OpKind::AcquireAll {
                spec,
                token,
                mut groups,
                next,
                first_sent,
            } => {
                let first_sent = first_sent.or(sent_at).unwrap_or(now);
                let outcome = match answered {
                    Answered::Reply(Reply::Acquired(Some(_))) if next + 1 < groups.len() => {
                        let first_sent = Some(first_sent);
                        return self.acquire_group(
                            owner,
                            spec,
                            token,
                            groups,
                            next + 1,
                            first_sent,
                            now,
                        );
                    }
                    Answered::Reply(Reply::Acquired(Some(_))) => {
                        return self.deliver(
                            owner,
                            Outcome::Granted(self.grant(spec, token, None, first_sent)),
                            now,
                        );
                    }
                    Answered::Reply(Reply::Acquired(None)) => Outcome::Refused { attempts: 1 },
                    Answered::Failed { error, .. } => Outcome::Failed(error),
                    _ => Outcome::Failed(EngineError::new(
                        ErrorKind::Redis,
                        "a reply of the wrong kind",
                    )),
                };
                // Held (or failed) at group `next`: what the groups before it took goes back
                // first, so that the caller never sees a part of it still taken. (A group whose
                // reply was lost is given back by its connection.)
                groups.truncate(next);
                if self.closed {
                    return self.deliver(owner, outcome, now);
                }
                self.each_group(owner, token, None, groups, Some(Box::new(outcome)), now)
            }
            OpKind::EachGroup {
                token,
                ttl,
                groups,
                next,
                done,
                first_sent,
                then,
                mut error,
            } => {
                let first_sent = first_sent.or(sent_at).unwrap_or(now);
                let done = match (answered, ttl) {
                    (Answered::Reply(Reply::Count(n)), None) => {
                        done + usize::try_from(n).unwrap_or(0)
                    }
                    (Answered::Reply(Reply::Flag(true)), Some(_)) => done + 1,
                    (Answered::Reply(Reply::Flag(false)), Some(_)) => done,
                    (Answered::Failed { error: failed, .. }, _) => {
                        // (A group whose reply was lost is sent again by its connection.)
                        error.get_or_insert(failed);
                        done
                    }
                    _ => {
                        let err = EngineError::new(ErrorKind::Redis, "a reply of the wrong kind");
                        error.get_or_insert(err);
                        done
                    }
                };
                // A release (a rollback too) goes on through every group, past failed ones, so
                // that nothing it could free stays held; an extend stops at the first group not
                // extended (the lease is lost anyway).
                let stop = ttl.is_some() && (error.is_some() || done <= next);
                if next + 1 < groups.len() && !stop && !self.closed {
                    let request = group_request(&groups[next + 1], &token, ttl);
                    let kind = OpKind::EachGroup {
                        token,
                        ttl,
                        groups,
                        next: next + 1,
                        done,
                        first_sent: Some(first_sent),
                        then,
                        error,
                    };
                    return self.start(owner, kind, request, now);
                }
                if let Some(outcome) = then {
                    return self.deliver(owner, *outcome, now);
                }
                if let Some(err) = error {
                    return self.deliver(owner, Outcome::Failed(err), now);
                }
                let all = match ttl {
                    None => done == groups.iter().map(Vec::len).sum::<usize>(),
                    Some(_) => done == groups.len(),
                };
                if let (true, Some(ttl)) = (all, ttl) {
                    self.events.push(Event::Extended {
                        token,
                        sent_at: first_sent,
                        ttl,
                    });
                }
                self.deliver(owner, Outcome::Flag(all), now)
            }
            _ => {}
        }
    }

    /// A waiter's attempt ended.
    fn attempted(&mut self, id: CallId, outcome: Outcome, now: Instant) {
        if self.waits.get(id).is_none() {
            // Cancelled or closed meanwhile: a lock this attempt took goes back at once.
            if let Outcome::Granted(grant) = outcome {
                self.give_back_grant(grant, now);
            }
            return;
        }
        match outcome {
            Outcome::Refused { .. } => {
                let was_watching = self.waits.get(id).is_some_and(|w| w.watching);
                match self.waits.held(id, now) {
                    Some(_) => {
                        if !was_watching {
                            self.watch_keys(id);
                        }
                    }
                    None => {
                        self.finish_waiter(id, Outcome::Refused { attempts: 0 });
                    }
                }
            }
            other => {
                self.finish_waiter(id, other);
            }
        }
    }

    fn finish_waiter(&mut self, id: CallId, mut outcome: Outcome) -> bool {
        let Some(waiter) = self.waits.remove(id) else {
            return false;
        };
        match &mut outcome {
            Outcome::Granted(grant) => grant.attempts = waiter.attempts,
            Outcome::Refused { attempts } => *attempts = waiter.attempts,
            _ => {}
        }
        if waiter.watching {
            self.events.push(Event::Unwatch(waiter.key));
            for key in waiter.spec.also {
                self.events.push(Event::Unwatch(key));
            }
        }
        self.events.push(Event::Done(id, outcome));
        true
    }

    /// The waiter starts listening for releases of each of its keys.
    fn watch_keys(&mut self, id: CallId) {
        let Some(w) = self.waits.get(id) else {
            return;
        };
        let keys: Vec<String> = std::iter::once(&w.key)
            .chain(&w.spec.also)
            .cloned()
            .collect();
        for key in keys {
            let home = self.home_of(&key);
            self.events.push(Event::Watch { key, home });
        }
    }

    /// On a cluster, the master serving `key`'s slot, if the slot map says which.
    fn home_of(&self, key: &str) -> Option<Arc<ServerConfig>> {
        let Layout::Cluster(map) = &self.layout else {
            return None;
        };
        let conn = map
            .slots
            .get(usize::from(keys::slot(key)))
            .copied()
            .flatten()?;
        match &self.endpoints[conn] {
            Endpoint::Server(config) => Some(config.clone()),
            Endpoint::Sentinel(_) => None,
        }
    }

    /// Gives back a grant nobody will hold (its acquire was cancelled or closed meanwhile).
    fn give_back_grant(&mut self, grant: Grant, now: Instant) {
        if grant.also.is_empty() {
            return self.give_back(grant.key, grant.token, now);
        }
        let mut keys = grant.also;
        keys.push(grant.key);
        let groups = self.groups_of(keys);
        self.each_group(Owner::Nobody, grant.token, None, groups, None, now);
    }

    fn give_back(&mut self, key: String, token: String, now: Instant) {
        let request = self.release_request(key.clone(), token, true);
        self.start(
            Owner::Nobody,
            OpKind::Release { key, open: false },
            request,
            now,
        );
    }

    // ---- releasing -----------------------------------------------------------------------

    fn release(&mut self, owner: Owner, key: String, token: String, now: Instant) {
        // A waiter acquiring with `replicas` attempts on a connection of its own: nothing would
        // put its attempt behind the release.
        let turn = if self.family == Family::ReadWrite {
            // Readers share: no hand-over to one waiter; every release that frees a side is
            // published, and every waiter here tries when it hears it (`release_heard`).
            Turn::Nobody
        } else {
            // A lock over several resources may take its keys on other connections: it gets no
            // hand-over (the release is published and it hears it).
            self.waits
                .next_in_line(&key, |spec| spec.replicas.is_none() && spec.also.is_empty())
        };
        let (publish, open) = match turn {
            Turn::HandOver(_) => (false, false),
            Turn::Open => (true, true),
            Turn::Nobody => (true, false),
        };
        let request = self.release_request(key.clone(), token, publish);
        if open {
            *self.open_releases.entry(key.clone()).or_default() += 1;
        }
        self.start(owner, OpKind::Release { key, open }, request, now);
        if let Turn::HandOver(next) = turn {
            // Hand-over: the waiter's attempt goes out right behind the release.
            self.attempt(next, now);
        }
    }

    /// This Lock released `key` in the open and `told` subscribers heard it.
    fn released_in_open(&mut self, key: &str, told: i64, now: Instant) {
        let ours = self.waits.watched(key);
        if let Some(id) = self.waits.after_open_release(key, told, ours, now) {
            self.attempt(id, now);
        }
    }

    // ---- ops -----------------------------------------------------------------------------

    fn new_op(&mut self, owner: Owner, kind: OpKind, now: Instant) -> u64 {
        let id = self.next_op;
        self.next_op += 1;
        self.ops.insert(
            id,
            Op {
                owner,
                kind,
                started: now,
                quorum: None,
                valid_until: None,
                tries: 1,
                give_up_at: now + self.command_timeout * u32::from(CLUSTER_TRIES),
            },
        );
        id
    }

    /// Starts an op of one request: on the server, on every Redlock master, or on the cluster
    /// node serving its key.
    fn start(&mut self, owner: Owner, kind: OpKind, request: Request, now: Instant) {
        let is_acquire = matches!(kind, OpKind::Acquire { .. });
        let ttl = match &kind {
            OpKind::Acquire { spec, .. } => Some(spec.ttl),
            _ => None,
        };
        let op = self.new_op(owner, kind, now);
        match &self.layout {
            Layout::Single { .. } => self.conns[0].submit(tag(op, 0), request, now),
            Layout::Redlock { masters } => {
                let masters = *masters;
                let items = match &request {
                    Request::ExtendMany { items } => items.len(),
                    _ => 0,
                };
                if let Some(entry) = self.ops.get_mut(&op) {
                    entry.quorum = Some(Box::new(QuorumState {
                        tally: Tally::new(masters),
                        items: (0..items).map(|_| Tally::new(masters)).collect(),
                        answered: vec![false; masters],
                        granted: vec![false; masters],
                        votes: vec![VoteAnswer::Pending; masters],
                        told: 0,
                    }));
                }
                if is_acquire && let Some(ttl) = ttl {
                    // Redlock's validity: a majority reached later does not count.
                    let valid_until = deadline_at(now + ttl, ttl, self.drift_factor);
                    self.dues.insert((valid_until, Due::Validity(op)));
                    if let Some(entry) = self.ops.get_mut(&op) {
                        entry.valid_until = Some(valid_until);
                    }
                }
                for member in 0..masters {
                    self.conns[member].submit(tag(op, member), request.clone(), now);
                }
            }
            Layout::Cluster(_) => self.route(tag(op, 0), request, now),
        }
    }

    /// Hands every answer the connections have to the ops they belong to, until none is left
    /// (handling one may submit more).
    fn process(&mut self, now: Instant) {
        loop {
            let mut any = false;
            for index in 0..self.conns.len() {
                if self.conns[index].has_notices() {
                    let notices = self.conns[index].take_notices();
                    self.events.extend(notices.into_iter().map(Event::Notice));
                }
                if !self.conns[index].has_answers() {
                    continue;
                }
                any = true;
                for answer in self.conns[index].take_answers() {
                    self.on_answer(index, answer, now);
                }
            }
            if !any {
                break;
            }
        }
    }

    fn on_answer(&mut self, conn: usize, answer: Answer, now: Instant) {
        let op_id = answer.tag >> MEMBER_BITS;
        let member = (answer.tag & ((1 << MEMBER_BITS) - 1)) as usize;
        if op_id == REFRESH_OP {
            return self.slots_answered(answer, now);
        }
        if answer.tag == UNOWNED {
            return self.give_back_redirected(answer, now);
        }
        if self.is_cluster() && self.cluster_retry(conn, op_id, &answer, now) {
            return;
        }
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        if op.quorum.is_some() {
            return self.quorum_answer(op_id, conn, member, answer, now);
        }
        if let OpKind::Replicated { .. } = op.kind {
            return self.replicated_answer(op_id, member, answer, now);
        }
        let Some(op) = self.end_op(op_id) else {
            return;
        };
        if matches!(
            op.kind,
            OpKind::AcquireAll { .. } | OpKind::EachGroup { .. }
        ) {
            return self.group_answer(op, answer.outcome, answer.sent_at, now);
        }
        let extend_many = op.kind_is_extend_many();
        let outcome = match answer.outcome {
            Answered::Reply(reply) => self.single_outcome(op.kind, reply, answer.sent_at, now),
            Answered::Failed { error, .. } => Outcome::Failed(error),
            Answered::Redirected { .. } => Outcome::Failed(EngineError::new(
                ErrorKind::Redis,
                format!(
                    "{} redirected a call outside a cluster",
                    self.conns[conn].target()
                ),
            )),
        };
        let outcome = match (extend_many, outcome) {
            (Some(n), Outcome::Failed(err)) => Outcome::Flags(vec![Err(err); n]),
            (_, outcome) => outcome,
        };
        self.deliver(op.owner, outcome, now);
    }

    /// What one server's reply means for an op.
    fn single_outcome(
        &mut self,
        kind: OpKind,
        reply: Reply,
        sent_at: Option<Instant>,
        now: Instant,
    ) -> Outcome {
        let sent_at = sent_at.unwrap_or(now);
        match (kind, reply) {
            (OpKind::Acquire { spec, token }, Reply::Acquired(Some(fence))) => {
                Outcome::Granted(self.grant(spec, token, fence, sent_at))
            }
            (OpKind::Acquire { .. }, Reply::Acquired(None)) => Outcome::Refused { attempts: 1 },
            (OpKind::Release { key, open }, Reply::Released(told)) => {
                if let Some(told) = told
                    && open
                {
                    self.released_in_open(&key, told, now);
                }
                Outcome::Flag(told.is_some())
            }
            (OpKind::Extend { token, ttl }, Reply::Flag(extended)) => {
                if extended {
                    self.events.push(Event::Extended {
                        token,
                        sent_at,
                        ttl,
                    });
                }
                Outcome::Flag(extended)
            }
            (OpKind::Exists, Reply::Flag(held)) => Outcome::Flag(held),
            (OpKind::Exists, Reply::Count(held)) => Outcome::Flag(held > 0),
            (OpKind::Count, Reply::Count(n)) => Outcome::Count(n),
            (OpKind::Count, Reply::Flag(held)) => Outcome::Count(i64::from(held)),
            (OpKind::ExtendMany { .. }, Reply::Flags(flags)) => {
                Outcome::Flags(flags.into_iter().map(Ok).collect())
            }
            _ => Outcome::Failed(EngineError::new(
                ErrorKind::Redis,
                "a reply of the wrong kind",
            )),
        }
    }

    fn grant(
        &self,
        spec: AcquireSpec,
        token: String,
        fence: Option<i64>,
        sent_at: Instant,
    ) -> Grant {
        Grant {
            deadline: deadline_at(sent_at + spec.ttl, spec.ttl, self.drift_factor),
            key: spec.key,
            also: spec.also,
            token,
            fence,
            ttl: spec.ttl,
            sent_at,
            auto_extend: spec.auto_extend,
            watch: spec.watch,
            max_hold: spec.max_hold,
            attempts: 1,
        }
    }

    fn deliver(&mut self, owner: Owner, outcome: Outcome, now: Instant) {
        match owner {
            Owner::User(id) => self.events.push(Event::Done(id, outcome)),
            Owner::Waiter(id) => self.attempted(id, outcome, now),
            Owner::Nobody => {
                if let Outcome::Granted(grant) = outcome {
                    self.give_back_grant(grant, now);
                }
            }
        }
    }

    /// Removes an op that ends, whichever way.
    fn end_op(&mut self, op_id: u64) -> Option<Op> {
        let op = self.ops.remove(&op_id)?;
        if let Some(at) = op.valid_until {
            self.dues.remove(&(at, Due::Validity(op_id)));
        }
        if let OpKind::Release { key, open: true } = &op.kind
            && let Some(count) = self.open_releases.get_mut(key)
        {
            *count -= 1;
            if *count == 0 {
                self.open_releases.remove(key);
            }
        }
        Some(op)
    }

    fn fail_op(&mut self, op_id: u64, err: EngineError, now: Instant) {
        let Some(op) = self.end_op(op_id) else {
            return;
        };
        if matches!(
            op.kind,
            OpKind::AcquireAll { .. } | OpKind::EachGroup { .. }
        ) {
            // Its other groups still need their rollback or release.
            let failed = Answered::Failed {
                error: err,
                code: None,
            };
            return self.group_answer(op, failed, None, now);
        }
        let outcome = match op.kind_is_extend_many() {
            Some(n) => Outcome::Flags(vec![Err(err); n]),
            None => Outcome::Failed(err),
        };
        self.deliver(op.owner, outcome, now);
    }

    // ---- replica acknowledgement ---------------------------------------------------------

    fn replicated_answer(&mut self, op_id: u64, member: usize, answer: Answer, now: Instant) {
        let Some(op) = self.ops.get_mut(&op_id) else {
            return;
        };
        let OpKind::Replicated {
            granted, refused, ..
        } = &mut op.kind
        else {
            return;
        };
        if member == 0 {
            match answer.outcome {
                Answered::Reply(Reply::Acquired(Some(fence))) => {
                    *granted = Some((fence, answer.sent_at.unwrap_or(now)));
                }
                Answered::Reply(Reply::Acquired(None)) => *refused = true,
                Answered::Failed { error, .. } => {
                    // The WAIT behind it answers too; nothing to wait for.
                    *refused = true;
                    if let Some(op) = self.ops.remove(&op_id) {
                        self.deliver(op.owner, Outcome::Failed(error), now);
                    }
                }
                _ => *refused = true,
            }
            return;
        }
        let Some(op) = self.ops.remove(&op_id) else {
            return;
        };
        let OpKind::Replicated {
            spec,
            token,
            ack,
            conn,
            granted,
            ..
        } = op.kind
        else {
            return;
        };
        let Some((fence, sent_at)) = granted else {
            return self.deliver(op.owner, Outcome::Refused { attempts: 1 }, now);
        };
        let acknowledged = match answer.outcome {
            Answered::Reply(Reply::Count(n)) => Ok(n),
            Answered::Failed { error, .. } => Err(error),
            _ => Err(EngineError::new(
                ErrorKind::Redis,
                "a reply of the wrong kind to WAIT",
            )),
        };
        match acknowledged {
            Ok(n) if n >= i64::from(ack.count) => {
                let grant = self.grant(spec, token, fence, sent_at);
                self.deliver(op.owner, Outcome::Granted(grant), now);
            }
            outcome => {
                let target = self.conns[conn].target().to_owned();
                let release = self.release_request(spec.key.clone(), token, true);
                let give_back = self.give_back_op(&spec.key, now);
                self.conns[conn].submit(tag(give_back, 0), release, now);
                let err = match outcome {
                    Ok(n) => EngineError::new(
                        ErrorKind::Replication,
                        format!(
                            "{n} of {} replicas acknowledged the lock within {} ms at {target}; it was released",
                            ack.count,
                            ack.timeout.as_millis()
                        ),
                    ),
                    Err(err) => err,
                };
                self.deliver(op.owner, Outcome::Failed(err), now);
            }
        }
    }

    // ---- Redlock -------------------------------------------------------------------------

    fn quorum_answer(
        &mut self,
        op_id: u64,
        conn: usize,
        member: usize,
        answer: Answer,
        now: Instant,
    ) {
        let target = self.conns[conn].target().to_owned();
        let Some(quorum) = self.ops.get_mut(&op_id).and_then(|op| op.quorum.as_mut()) else {
            return;
        };
        quorum.answered[member] = true;
        quorum.votes[member] = match &answer.outcome {
            Answered::Reply(Reply::Acquired(Some(_))) => VoteAnswer::Granted,
            Answered::Reply(Reply::Acquired(None)) => VoteAnswer::Refused,
            Answered::Failed { error, .. } => VoteAnswer::Failed(error.message().to_owned()),
            _ => VoteAnswer::Failed("a reply of the wrong kind".to_owned()),
        };
        let tally = &mut quorum.tally;
        match answer.outcome {
            Answered::Reply(Reply::Acquired(Some(fence))) => {
                quorum.granted[member] = true;
                tally.yes(fence);
            }
            Answered::Reply(Reply::Released(Some(told))) => {
                quorum.told = quorum.told.max(told);
                tally.yes(None);
            }
            Answered::Reply(Reply::Flag(true)) => tally.yes(None),
            Answered::Reply(Reply::Acquired(None) | Reply::Released(None) | Reply::Flag(false)) => {
                tally.no()
            }
            Answered::Reply(Reply::Flags(flags)) => {
                tally.yes(None);
                for (item, flag) in quorum.items.iter_mut().zip(flags) {
                    if flag { item.yes(()) } else { item.no() }
                }
            }
            Answered::Failed { error, .. } => {
                for item in &mut quorum.items {
                    item.failed(&target, error.clone());
                }
                tally.failed(&target, error);
            }
            Answered::Reply(_) | Answered::Redirected { .. } => tally.failed(
                &target,
                EngineError::new(ErrorKind::Redis, "a reply of the wrong kind"),
            ),
        }
        let decided = if quorum.items.is_empty() {
            quorum.tally.decided()
        } else {
            quorum.items.iter().all(Tally::decided)
        };
        if decided {
            self.decide(op_id, false, now);
        }
    }

    fn validity_ran_out(&mut self, op_id: u64, now: Instant) {
        if self.ops.get(&op_id).is_some_and(|op| op.quorum.is_some()) {
            self.decide(op_id, true, now);
        }
    }

    /// The answers (or the validity time) decide a Redlock op; it ends here.
    fn decide(&mut self, op_id: u64, timed_out: bool, now: Instant) {
        let Some(op) = self.end_op(op_id) else {
            return;
        };
        let Some(quorum) = op.quorum else {
            return;
        };
        let QuorumState {
            tally,
            items,
            answered,
            granted,
            votes,
            told,
        } = *quorum;
        let started = op.started;
        let outcome = match op.kind {
            OpKind::Acquire { spec, token } => {
                let valid_until = deadline_at(started + spec.ttl, spec.ttl, self.drift_factor);
                let timed_out = timed_out || now >= valid_until;
                let outcome = tally.outcome("acquire", timed_out);
                // A master that failed, or one still silent when the validity ran out: worth
                // telling even unasked. (Silence past a majority is normal: it was decided.)
                let trouble = votes.iter().any(|v| match v {
                    VoteAnswer::Failed(_) => true,
                    VoteAnswer::Pending => timed_out,
                    _ => false,
                });
                if self.votes_wanted || trouble {
                    let votes = votes
                        .into_iter()
                        .enumerate()
                        .map(|(member, answer)| Vote {
                            target: self.conns[member].target().to_owned(),
                            answer,
                        })
                        .collect();
                    self.events.push(Event::Notice(Notice::Quorum {
                        key: spec.key.clone(),
                        granted: matches!(outcome, Ok(Some(_))),
                        votes,
                    }));
                }
                match outcome {
                    Ok(Some(fences)) => {
                        let fence = fences.into_iter().flatten().max();
                        Outcome::Granted(self.grant(spec, token, fence, started))
                    }
                    refused => {
                        // Give back what was or may yet be granted.
                        for member in 0..answered.len() {
                            if granted[member] || !answered[member] {
                                self.give_back_on(member, spec.key.clone(), token.clone(), now);
                            }
                        }
                        match refused {
                            Ok(_) => Outcome::Refused { attempts: 1 },
                            Err(err) => Outcome::Failed(err),
                        }
                    }
                }
            }
            OpKind::Release { key, open } => match tally.outcome("release", false) {
                Ok(released) => {
                    if released.is_some() && open {
                        self.released_in_open(&key, told, now);
                    }
                    Outcome::Flag(released.is_some())
                }
                Err(err) => Outcome::Failed(err),
            },
            OpKind::Extend { token, ttl } => match tally.outcome("extend", false) {
                Ok(extended) => {
                    if extended.is_some() {
                        self.events.push(Event::Extended {
                            token,
                            sent_at: started,
                            ttl,
                        });
                    }
                    Outcome::Flag(extended.is_some())
                }
                Err(err) => Outcome::Failed(err),
            },
            OpKind::Exists => match tally.outcome("check the lock", false) {
                Ok(held) => Outcome::Flag(held.is_some()),
                Err(err) => Outcome::Failed(err),
            },
            // Semaphores (the only users of Count) are not made over Redlock.
            OpKind::Count => match tally.outcome("count the lock", false) {
                Ok(held) => Outcome::Count(i64::from(held.is_some())),
                Err(err) => Outcome::Failed(err),
            },
            OpKind::ExtendMany { .. } => Outcome::Flags(
                items
                    .into_iter()
                    .map(|item| item.outcome("extend", false).map(|yes| yes.is_some()))
                    .collect(),
            ),
            // Never made over Redlock (`acquire_all`, `each_group`).
            OpKind::Replicated { .. } | OpKind::AcquireAll { .. } | OpKind::EachGroup { .. } => {
                return;
            }
        };
        self.deliver(op.owner, outcome, now);
    }

    /// An op for a release nobody waits for (a give-back), its request sent by the caller.
    fn give_back_op(&mut self, key: &str, now: Instant) -> u64 {
        let kind = OpKind::Release {
            key: key.to_owned(),
            open: false,
        };
        self.new_op(Owner::Nobody, kind, now)
    }

    /// A release on one master, behind whatever that master's socket has queued.
    fn give_back_on(&mut self, conn: usize, key: String, token: String, now: Instant) {
        let op = self.give_back_op(&key, now);
        let request = self.release_request(key, token, true);
        self.conns[conn].submit(tag(op, 0), request, now);
    }

    // ---- Redis Cluster -------------------------------------------------------------------

    /// Sends a cluster request to the node serving its key (or parks it until the slot map
    /// says which).
    fn route(&mut self, tag: Tag, request: Request, now: Instant) {
        let Layout::Cluster(map) = &mut self.layout else {
            return;
        };
        let slot = request.routing_key().map_or(0, keys::slot);
        match map.slots.get(usize::from(slot)).copied().flatten() {
            Some(conn) => self.conns[conn].submit(tag, request, now),
            None => {
                map.parked.push((tag, request));
                self.refresh_slots(now);
            }
        }
    }

    /// Asks a startup node (or a known master) for the slot map, unless asked recently.
    fn refresh_slots(&mut self, now: Instant) {
        let Layout::Cluster(map) = &mut self.layout else {
            return;
        };
        if map.refreshing || self.closed {
            return;
        }
        if let Some(last) = map.last_refresh
            && now < last + REFRESH_EVERY
        {
            self.dues.insert((last + REFRESH_EVERY, Due::Refresh));
            return;
        }
        map.refreshing = true;
        map.last_refresh = Some(now);
        // Rotate through every node known, startup nodes first, so a dead one is not asked twice
        // in a row.
        let candidates = self.conns.len();
        let conn = map.next_seed % candidates;
        map.next_seed += 1;
        self.conns[conn].submit(tag(REFRESH_OP, conn), Request::ClusterSlots, now);
    }

    fn slots_answered(&mut self, answer: Answer, now: Instant) {
        let ranges = match answer.outcome {
            Answered::Reply(Reply::Slots(ranges)) if !ranges.is_empty() => Ok(ranges),
            Answered::Reply(_) => Err(EngineError::new(
                ErrorKind::Redis,
                "the cluster serves no slots yet (CLUSTER SLOTS is empty)",
            )),
            Answered::Failed { error, .. } => Err(error),
            Answered::Redirected { .. } => Err(EngineError::new(
                ErrorKind::Redis,
                "CLUSTER SLOTS was redirected",
            )),
        };
        let Layout::Cluster(map) = &mut self.layout else {
            return;
        };
        map.refreshing = false;
        match ranges {
            Ok(ranges) => {
                map.last_error = None;
                self.apply_slot_map(ranges, now);
            }
            Err(err) => {
                map.last_error = Some(err);
                if !map.parked.is_empty() {
                    let at = now + CLUSTER_RETRY;
                    self.dues.insert((at, Due::Refresh));
                }
            }
        }
        self.fail_parked_past_their_time(now);
    }

    fn apply_slot_map(&mut self, ranges: Vec<SlotRange>, now: Instant) {
        let mut slots = vec![None; 16384];
        for range in ranges {
            let Some(conn) = self.cluster_conn(&range.host, range.port, now) else {
                continue;
            };
            for slot in range.start..=range.end {
                slots[usize::from(slot)] = Some(conn);
            }
        }
        let Layout::Cluster(map) = &mut self.layout else {
            return;
        };
        map.slots = slots;
        let parked = std::mem::take(&mut map.parked);
        for (tag, request) in parked {
            self.route(tag, request, now);
        }
    }

    /// The connection to the cluster node at `host:port`, made if new.
    /// `None` past `MAX_CLUSTER_NODES` (a hostile node could name endless addresses).
    fn cluster_conn(&mut self, host: &str, port: u16, now: Instant) -> Option<usize> {
        let Layout::Cluster(map) = &mut self.layout else {
            return None;
        };
        if let Some(conn) = map.by_address.get(&(host.to_owned(), port)) {
            return Some(*conn);
        }
        if map.by_address.len() >= MAX_CLUSTER_NODES {
            return None;
        }
        let mut config = map.template.clone();
        config.address = ServerAddress::Tcp {
            host: host.to_owned(),
            port,
        };
        let conn = self.conns.len();
        map.by_address.insert((host.to_owned(), port), conn);
        self.conns
            .push(Conn::new(ConnSettings::for_server(&config), now));
        self.endpoints.push(Endpoint::Server(Arc::new(config)));
        Some(conn)
    }

    /// A give-back met MOVED or ASK: it goes to the node named, once.
    fn give_back_redirected(&mut self, answer: Answer, now: Instant) {
        let Answered::Redirected {
            ask, host, port, ..
        } = &answer.outcome
        else {
            return;
        };
        let Some(conn) = self.cluster_conn(host, *port, now) else {
            return;
        };
        let Some(key) = answer.request.routing_key() else {
            return;
        };
        let op = self.give_back_op(key, now);
        if *ask {
            self.conns[conn].submit_asking(tag(op, 0), answer.request, now);
        } else {
            self.conns[conn].submit(tag(op, 0), answer.request, now);
        }
    }

    /// A cluster node's socket failed: the slot map may have changed (a failover).
    fn cluster_node_trouble(&mut self, _conn: usize, now: Instant) {
        if self.is_cluster() {
            self.refresh_slots(now);
        }
    }

    /// Handles a cluster answer that calls for another try; `true` if it did.
    fn cluster_retry(&mut self, conn: usize, op_id: u64, answer: &Answer, now: Instant) -> bool {
        let retry_code = match &answer.outcome {
            Answered::Redirected { .. } => None,
            Answered::Failed {
                code: Some(code), ..
            } if matches!(
                code.as_str(),
                "TRYAGAIN" | "CLUSTERDOWN" | "LOADING" | "MASTERDOWN"
            ) =>
            {
                Some(code.clone())
            }
            // Never written (its node was unreachable): the slot may have moved.
            Answered::Failed { code: None, error }
                if answer.sent_at.is_none()
                    && matches!(error.kind(), ErrorKind::Connection | ErrorKind::Timeout) =>
            {
                Some(String::new())
            }
            _ => return false,
        };
        let Some(op) = self.ops.get_mut(&op_id) else {
            return false;
        };
        if op.tries >= CLUSTER_TRIES || now >= op.give_up_at {
            return false;
        }
        op.tries += 1;
        let request = answer.request.clone();
        let from = self.conns[conn].target().to_owned();
        match (&answer.outcome, retry_code) {
            (
                Answered::Redirected {
                    ask,
                    slot,
                    host,
                    port,
                },
                _,
            ) => {
                let Some(conn) = self.cluster_conn(host, *port, now) else {
                    return false;
                };
                self.events.push(Event::Notice(Notice::Redirected {
                    from,
                    ask: *ask,
                    slot: *slot,
                    to: self.conns[conn].target().to_owned(),
                }));
                if *ask {
                    self.conns[conn].submit_asking(answer.tag, request, now);
                } else {
                    if let Layout::Cluster(map) = &mut self.layout
                        && let Some(entry) = map.slots.get_mut(usize::from(*slot))
                    {
                        *entry = Some(conn);
                    }
                    self.conns[conn].submit(answer.tag, request, now);
                    self.refresh_slots(now);
                }
            }
            (_, Some(code)) => {
                let why = match (&answer.outcome, code.is_empty()) {
                    (Answered::Failed { error, .. }, true) => error.message().to_owned(),
                    _ => code.clone(),
                };
                self.events
                    .push(Event::Notice(Notice::ClusterRetry { target: from, why }));
                if code.is_empty() {
                    self.refresh_slots(now);
                }
                self.retries.insert(op_id, (answer.tag, request));
                self.dues.insert((now + CLUSTER_RETRY, Due::Retry(op_id)));
            }
            _ => return false,
        }
        true
    }

    fn fail_parked_past_their_time(&mut self, now: Instant) {
        let Layout::Cluster(map) = &mut self.layout else {
            return;
        };
        let ops = &self.ops;
        let (late, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut map.parked)
                .into_iter()
                .partition(|(tag, _)| {
                    ops.get(&(tag >> MEMBER_BITS))
                        .is_none_or(|op| now >= op.give_up_at)
                });
        map.parked = keep;
        let err = map.last_error.clone().unwrap_or_else(|| {
            EngineError::new(
                ErrorKind::Connection,
                "no cluster node told which node serves the key",
            )
        });
        for (tag, _) in late {
            self.fail_op(tag >> MEMBER_BITS, err.clone(), now);
        }
    }
}

impl Op {
    fn kind_is_extend_many(&self) -> Option<usize> {
        match self.kind {
            OpKind::ExtendMany { n } => Some(n),
            _ => None,
        }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;

/// A ReleaseAll (`ttl` None) or ExtendAll of one group.
fn group_request(keys: &[String], token: &str, ttl: Option<Duration>) -> Request {
    match ttl {
        None => Request::ReleaseAll {
            keys: keys.to_vec(),
            token: token.to_owned(),
        },
        Some(ttl) => Request::ExtendAll {
            keys: keys.to_vec(),
            token: token.to_owned(),
            ttl_ms: ms(ttl),
        },
    }
}
