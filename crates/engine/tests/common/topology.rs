//! Redis Cluster and Sentinel topologies of real `redis-server` processes on free ports, for the
//! cluster and sentinel tests. Each topology lives in its own temp dir; dropping it kills the
//! processes (SIGKILL) and removes the dir, also when the test panics.
//!
//! A submodule of `common` (`pub mod topology;` in `common/mod.rs`). The harness blocks the calling
//! thread: in a `#[tokio::test]`, whose runtime has a single thread, the engine's tasks stall
//! meanwhile; call it through `spawn_blocking` or on a multi-thread runtime when they must run on,
//! e.g. during `wait_for_failover`.
//!
//! Measured on 2 cores: a cluster of 3 masters + 3 replicas is ready in ~2.3 s (Redis keeps a new
//! master out of `cluster_state:ok` for its first 2 s) and fails over in ~2-3 s; a sentinel group
//! with 1 sentinel is ready in ~0.3 s, with 3 in ~2.2 s, and a forced failover takes ~1.2 s.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::free_port;

const HOST: &str = "127.0.0.1";
const SLOT_COUNT: usize = 16384;
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Small, so that a killed master is flagged failed after ~1 s and replaced ~1 s later.
const CLUSTER_NODE_TIMEOUT_MS: u64 = 1000;
const SENTINEL_MASTER_NAME: &str = "mymaster";
const SENTINEL_DOWN_AFTER_MS: u64 = 1000;
const SENTINEL_FAILOVER_TIMEOUT_MS: u64 = 3000;

/// Polls `probe` until it returns `Ok`. An `Err` means "not yet"; the last one explains a timeout.
fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(reason) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {reason}")
            }
            Err(_) => sleep(POLL_INTERVAL),
        }
    }
}

/// Sends one command on a fresh connection: no connection outlives a killed node.
fn command<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> Result<T, String> {
    let failed = |e: redis::RedisError| format!("{} on {port}: {e}", args.join(" "));
    let client = redis::Client::open(format!("redis://{HOST}:{port}/")).map_err(failed)?;
    let mut connection = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .map_err(failed)?;
    connection
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(failed)?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut connection).map_err(failed)
}

/// `key:value` lines of INFO and CLUSTER INFO.
fn info_fields(port: u16, args: &[&str]) -> Result<HashMap<String, String>, String> {
    let text: String = command(port, args)?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.to_string(), value.trim().to_string()))
        .collect())
}

fn distinct_free_ports(count: usize) -> Vec<u16> {
    // free_port() releases its port at once, so two calls may return the same one.
    let mut ports = Vec::with_capacity(count);
    let mut seen = HashSet::new();
    while ports.len() < count {
        let port = free_port();
        if seen.insert(port) {
            ports.push(port);
        }
    }
    ports
}

/// `[("--name", value), ...]` as `redis-server` arguments.
fn option_args<const N: usize>(options: [(&str, String); N]) -> Vec<String> {
    options
        .into_iter()
        .flat_map(|(name, value)| [name.to_string(), value])
        .collect()
}

/// `redis-server` arguments of a node that may replicate or be replicated.
fn data_node_args(dir: &TempDir, port: u16) -> Vec<String> {
    option_args([
        ("--port", port.to_string()),
        ("--bind", HOST.to_string()),
        ("--save", String::new()),
        ("--appendonly", "no".to_string()),
        // A replica stores the RDB it receives: keep it in the temp dir, one file per node.
        ("--dir", dir.0.display().to_string()),
        ("--dbfilename", format!("dump-{port}.rdb")),
        // The default 5 s delay before a full sync would dominate every start and failover.
        ("--repl-diskless-sync-delay", "0".to_string()),
    ])
}

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(kind: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "sdl-{kind}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of the same name belongs to a dead process that had our pid.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("a temp dir for redis-server");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` process, killed when dropped. Unlike `RedisServer` it takes its port from the
/// caller (cluster bus ports must not collide with it) and runs sentinels, which need the config
/// file as their first argument.
struct Process {
    port: u16,
    child: Option<Child>,
}

impl Process {
    fn spawn(port: u16, args: &[String]) -> Self {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed to run the topology tests");
        let mut process = Self {
            port,
            child: Some(child),
        };
        wait_for(
            &format!("redis-server to listen on {port}"),
            Duration::from_secs(10),
            || {
                if let Some(status) = process.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                    panic!("redis-server on {port} exited at start ({status}), args {args:?}");
                }
                std::net::TcpStream::connect((HOST, port))
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        );
        process
    }

    fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Master,
    Replica,
}

/// A cluster node as it was at start; failovers change the live roles.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub port: u16,
    pub id: String,
    pub role: Role,
    /// For a replica, the port of its master.
    pub master_port: Option<u16>,
}

/// One line of CLUSTER NODES: the view of the node that was asked.
struct NodeEntry {
    id: String,
    port: u16,
    flags: Vec<String>,
    master_id: Option<String>,
    /// First and last slot of each range, for a master.
    slot_ranges: Vec<(usize, usize)>,
}

impl NodeEntry {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn serves(&self, slot: usize) -> bool {
        self.has_flag("master")
            && !self.has_flag("fail")
            && self
                .slot_ranges
                .iter()
                .any(|&(first, last)| first <= slot && slot <= last)
    }
}

fn cluster_nodes(port: u16) -> Result<Vec<NodeEntry>, String> {
    let text: String = command(port, &["CLUSTER", "NODES"])?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            // <id> <ip:port@busport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
            let fields: Vec<&str> = line.split_whitespace().collect();
            let malformed = || format!("unexpected CLUSTER NODES line from {port}: {line}");
            if fields.len() < 8 {
                return Err(malformed());
            }
            let address = fields[1].split('@').next().unwrap_or_default();
            let node_port = address
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(malformed)?;
            let slot_ranges = fields[8..]
                .iter()
                .filter(|slot| !slot.starts_with('[')) // slots being migrated: none here
                .map(|slot| {
                    let (first, last) = slot.split_once('-').unwrap_or((slot, slot));
                    Ok((
                        first.parse().map_err(|_| malformed())?,
                        last.parse().map_err(|_| malformed())?,
                    ))
                })
                .collect::<Result<_, String>>()?;
            Ok(NodeEntry {
                id: fields[0].to_string(),
                port: node_port,
                flags: fields[2].split(',').map(str::to_string).collect(),
                master_id: (fields[3] != "-").then(|| fields[3].to_string()),
                slot_ranges,
            })
        })
        .collect()
}

/// A Redis Cluster: masters sharing the 16384 slots, each with the same number of replicas.
pub struct Cluster {
    // Fields drop in order: the processes die before their dir is removed.
    processes: Vec<Process>,
    dir: TempDir,
    nodes: Vec<ClusterNode>,
    /// Slots of each master killed by `kill_master`, to recognise their new owner.
    killed_master_slots: HashMap<u16, Vec<(usize, usize)>>,
}

impl Cluster {
    /// Starts `masters` (at least 3) masters, each with `replicas_per_master` replicas, and returns
    /// once every node reports `cluster_state:ok` and every replica is in sync with its master.
    pub fn start(masters: usize, replicas_per_master: usize) -> Self {
        assert!(
            masters >= 3,
            "redis-cli --cluster create needs at least 3 masters"
        );
        let node_count = masters * (1 + replicas_per_master);
        let mut cluster = Self {
            processes: Vec::with_capacity(node_count),
            dir: TempDir::new("cluster"),
            nodes: Vec::new(),
            killed_master_slots: HashMap::new(),
        };
        // An explicit bus port per node: the default, port + 10000, may be taken or beyond 65535.
        let ports = distinct_free_ports(2 * node_count);
        for pair in ports.chunks(2) {
            let (port, bus_port) = (pair[0], pair[1]);
            let mut args = data_node_args(&cluster.dir, port);
            let config_file = cluster.dir.0.join(format!("nodes-{port}.conf"));
            args.extend(option_args([
                ("--cluster-enabled", "yes".to_string()),
                ("--cluster-config-file", config_file.display().to_string()),
                ("--cluster-port", bus_port.to_string()),
                (
                    "--cluster-node-timeout",
                    CLUSTER_NODE_TIMEOUT_MS.to_string(),
                ),
            ]));
            cluster.processes.push(Process::spawn(port, &args));
        }
        cluster.create(replicas_per_master);
        cluster.nodes = cluster.wait_until_ready();
        cluster
    }

    /// Runs `redis-cli --cluster create`: masters are the first addresses, the others their replicas.
    fn create(&self, replicas_per_master: usize) {
        let log_path = self.dir.0.join("cluster-create.log");
        let log = fs::File::create(&log_path).expect("a log file for redis-cli");
        let mut redis_cli = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(self.processes.iter().map(|p| format!("{HOST}:{}", p.port)))
            .args(["--cluster-replicas", &replicas_per_master.to_string()])
            .arg("--cluster-yes")
            .stdout(log.try_clone().expect("a log file for redis-cli"))
            .stderr(log)
            .spawn()
            .expect("redis-cli must be installed to run the cluster tests");
        // redis-cli waits for the nodes to agree without a deadline of its own.
        let status = wait_for("redis-cli --cluster create", START_TIMEOUT, || {
            redis_cli
                .try_wait()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "still running".to_string())
        });
        assert!(
            status.success(),
            "redis-cli --cluster create failed ({status}):\n{}",
            fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    fn wait_until_ready(&self) -> Vec<ClusterNode> {
        let node_count = self.processes.len().to_string();
        let slot_count = SLOT_COUNT.to_string();
        let view = wait_for("every cluster node to be ready", START_TIMEOUT, || {
            for process in &self.processes {
                let info = info_fields(process.port, &["CLUSTER", "INFO"])?;
                let field = |name: &str| info.get(name).map(String::as_str).unwrap_or("?");
                if field("cluster_state") != "ok"
                    || field("cluster_slots_ok") != slot_count
                    || field("cluster_known_nodes") != node_count
                {
                    return Err(format!(
                        "node {}: cluster_state:{} cluster_slots_ok:{} cluster_known_nodes:{}",
                        process.port,
                        field("cluster_state"),
                        field("cluster_slots_ok"),
                        field("cluster_known_nodes")
                    ));
                }
            }
            let view = cluster_nodes(self.processes[0].port)?;
            // A replica that never synced refuses to fail over (its data counts as infinitely old).
            for replica in view.iter().filter(|node| node.has_flag("slave")) {
                let replication = info_fields(replica.port, &["INFO", "replication"])?;
                if replication.get("master_link_status").map(String::as_str) != Some("up") {
                    return Err(format!("replica {} is not in sync", replica.port));
                }
            }
            Ok(view)
        });
        let port_of = |id: &str| view.iter().find(|node| node.id == id).map(|node| node.port);
        let mut nodes: Vec<ClusterNode> = self
            .processes
            .iter()
            .map(|process| {
                let entry = view
                    .iter()
                    .find(|node| node.port == process.port)
                    .unwrap_or_else(|| {
                        panic!("node {} is missing from CLUSTER NODES", process.port)
                    });
                ClusterNode {
                    port: entry.port,
                    id: entry.id.clone(),
                    role: if entry.has_flag("master") {
                        Role::Master
                    } else {
                        Role::Replica
                    },
                    master_port: entry.master_id.as_deref().and_then(port_of),
                }
            })
            .collect();
        nodes.sort_by_key(|node| node.role == Role::Replica);
        nodes
    }

    /// The nodes as they were at start, masters first.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// `redis://127.0.0.1:<port>` of every node started, killed ones included.
    pub fn startup_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("redis://{HOST}:{}", node.port))
            .collect()
    }

    fn running_port(&self) -> u16 {
        self.processes
            .iter()
            .find(|p| p.is_running())
            .expect("a running cluster node")
            .port
    }

    /// Port of the master serving `slot`, as seen by a running node.
    pub fn master_for_slot(&self, slot: u16) -> u16 {
        let port = self.running_port();
        let view = cluster_nodes(port).unwrap_or_else(|e| panic!("{e}"));
        view.iter()
            .find(|node| node.serves(slot.into()))
            .unwrap_or_else(|| panic!("no master serves slot {slot} according to node {port}"))
            .port
    }

    /// Port of the master serving `key` (hash tags included), as seen by a running node.
    pub fn master_for_key(&self, key: &str) -> u16 {
        let slot = command(self.running_port(), &["CLUSTER", "KEYSLOT", key])
            .unwrap_or_else(|e| panic!("{e}"));
        self.master_for_slot(slot)
    }

    /// Kills a master with SIGKILL, like a crash.
    pub fn kill_master(&mut self, port: u16) {
        let me = cluster_nodes(port)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .find(|node| node.has_flag("myself"))
            .expect("CLUSTER NODES lists the node itself");
        assert!(
            me.has_flag("master") && !me.slot_ranges.is_empty(),
            "node {port} is not a master serving slots"
        );
        self.killed_master_slots.insert(port, me.slot_ranges);
        self.processes
            .iter_mut()
            .find(|p| p.port == port)
            .expect("a node of this cluster")
            .kill();
    }

    /// Waits until a replica took over all slots of a master killed by `kill_master` and every
    /// running node agrees on it and reports `cluster_state:ok`; returns the new master's port.
    pub fn wait_for_failover(&self, old_master_port: u16, timeout: Duration) -> u16 {
        let slot_ranges = self
            .killed_master_slots
            .get(&old_master_port)
            .unwrap_or_else(|| panic!("no master on {old_master_port} was killed by kill_master"));
        // A failover moves the slots of a master as a whole: the ends of its ranges tell the new owner.
        let probe_slots: Vec<usize> = slot_ranges
            .iter()
            .flat_map(|&(first, last)| [first, last])
            .collect();
        wait_for(
            &format!("a replica to take over the slots of {old_master_port}"),
            timeout,
            || {
                let mut owners = HashSet::new();
                for process in self.processes.iter().filter(|p| p.is_running()) {
                    let info = info_fields(process.port, &["CLUSTER", "INFO"])?;
                    let state = info.get("cluster_state").map(String::as_str);
                    if state != Some("ok") {
                        return Err(format!("node {}: cluster_state:{state:?}", process.port));
                    }
                    let view = cluster_nodes(process.port)?;
                    for &slot in &probe_slots {
                        let owner = view.iter().find(|node| node.serves(slot));
                        owners.insert(owner.map_or(old_master_port, |node| node.port));
                    }
                }
                match owners.iter().collect::<Vec<_>>()[..] {
                    [&owner] if owner != old_master_port => Ok(owner),
                    _ => Err(format!("owners of its slots: {owners:?}")),
                }
            },
        )
    }
}

/// A master, its replicas and the sentinels that monitor it as `mymaster`.
pub struct SentinelGroup {
    // Fields drop in order: the processes die before their dir is removed.
    sentinels: Vec<Process>,
    /// The master first, then the replicas.
    data_nodes: Vec<Process>,
    dir: TempDir,
}

impl SentinelGroup {
    /// Starts a master, `replicas` (at least 1) replicas in sync with it and `sentinels` sentinels
    /// (quorum: a majority), and returns once the sentinels know the master, the replicas and each
    /// other, so that a failover can start at once.
    pub fn start(sentinels: usize, replicas: usize) -> Self {
        assert!(replicas >= 1, "a failover needs at least one replica");
        let mut group = Self {
            sentinels: Vec::with_capacity(sentinels),
            data_nodes: Vec::with_capacity(1 + replicas),
            dir: TempDir::new("sentinel"),
        };
        let ports = distinct_free_ports(1 + replicas + sentinels);
        let (data_ports, sentinel_ports) = ports.split_at(1 + replicas);
        let master_port = data_ports[0];
        group.data_nodes.push(Process::spawn(
            master_port,
            &data_node_args(&group.dir, master_port),
        ));
        for &port in &data_ports[1..] {
            let mut args = data_node_args(&group.dir, port);
            args.extend([
                "--replicaof".to_string(),
                HOST.to_string(),
                master_port.to_string(),
            ]);
            group.data_nodes.push(Process::spawn(port, &args));
        }
        // Started before the sentinels, the replicas are in the master's first INFO reply to them.
        wait_for("the replicas to sync", START_TIMEOUT, || {
            for &port in &data_ports[1..] {
                let replication = info_fields(port, &["INFO", "replication"])?;
                if replication.get("master_link_status").map(String::as_str) != Some("up") {
                    return Err(format!("replica {port} is not in sync"));
                }
            }
            Ok(())
        });

        let quorum = sentinels / 2 + 1;
        for &port in sentinel_ports {
            // Sentinels rewrite their config file, and Redis takes it only as the first argument.
            let config_path = group.dir.0.join(format!("sentinel-{port}.conf"));
            let config = [
                format!("port {port}"),
                format!("bind {HOST}"),
                format!("dir {}", group.dir.0.display()),
                format!("sentinel monitor {SENTINEL_MASTER_NAME} {HOST} {master_port} {quorum}"),
                format!(
                    "sentinel down-after-milliseconds {SENTINEL_MASTER_NAME} {SENTINEL_DOWN_AFTER_MS}"
                ),
                format!(
                    "sentinel failover-timeout {SENTINEL_MASTER_NAME} {SENTINEL_FAILOVER_TIMEOUT_MS}"
                ),
            ];
            fs::write(&config_path, config.join("\n") + "\n").expect("a sentinel config file");
            let args = [config_path.display().to_string(), "--sentinel".into()];
            group.sentinels.push(Process::spawn(port, &args));
        }

        let (replica_count, other_sentinels) = (replicas.to_string(), (sentinels - 1).to_string());
        wait_for(
            "the sentinels to know the master, its replicas and each other",
            START_TIMEOUT,
            || {
                for &port in sentinel_ports {
                    let master: HashMap<String, String> =
                        command(port, &["SENTINEL", "MASTER", SENTINEL_MASTER_NAME])?;
                    let field = |name: &str| master.get(name).map(String::as_str).unwrap_or("?");
                    if field("flags") != "master"
                        || field("num-slaves") != replica_count
                        || field("num-other-sentinels") != other_sentinels
                    {
                        return Err(format!(
                            "sentinel {port}: flags {}, num-slaves {}, num-other-sentinels {}",
                            field("flags"),
                            field("num-slaves"),
                            field("num-other-sentinels")
                        ));
                    }
                    // The link status comes from the replica's own INFO: once "ok", it may be promoted.
                    let replicas: Vec<HashMap<String, String>> =
                        command(port, &["SENTINEL", "REPLICAS", SENTINEL_MASTER_NAME])?;
                    for replica in &replicas {
                        let field =
                            |name: &str| replica.get(name).map(String::as_str).unwrap_or("?");
                        if field("flags") != "slave" || field("master-link-status") != "ok" {
                            return Err(format!(
                                "sentinel {port}: replica {} flags {}, link {}",
                                field("port"),
                                field("flags"),
                                field("master-link-status")
                            ));
                        }
                    }
                }
                Ok(())
            },
        );
        group
    }

    /// Port of the node started as master; after a failover ask `current_master`.
    pub fn master_port(&self) -> u16 {
        self.data_nodes[0].port
    }

    /// Ports of the nodes started as replicas.
    pub fn replica_ports(&self) -> Vec<u16> {
        self.data_nodes[1..].iter().map(|p| p.port).collect()
    }

    pub fn sentinel_addrs(&self) -> Vec<(String, u16)> {
        self.sentinels
            .iter()
            .map(|p| (HOST.to_string(), p.port))
            .collect()
    }

    pub fn master_name(&self) -> &str {
        SENTINEL_MASTER_NAME
    }

    fn master_reported_by(sentinel_port: u16) -> Result<u16, String> {
        let (_host, port): (String, u16) = command(
            sentinel_port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER_NAME],
        )?;
        Ok(port)
    }

    /// Port of the master according to the first sentinel.
    pub fn current_master(&self) -> u16 {
        Self::master_reported_by(self.sentinels[0].port).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Forces a failover (SENTINEL FAILOVER) and returns the new master's port once every sentinel
    /// reports it and it reports `role:master`. The old master stays up, still a master, until the
    /// sentinels turn it into a replica several seconds later; a second failover has to wait for that.
    pub fn failover(&self, timeout: Duration) -> u16 {
        let old_master = self.current_master();
        let _: () = command(
            self.sentinels[0].port,
            &["SENTINEL", "FAILOVER", SENTINEL_MASTER_NAME],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        wait_for(
            &format!("the sentinels to replace master {old_master}"),
            timeout,
            || {
                let reported = self
                    .sentinels
                    .iter()
                    .map(|p| Self::master_reported_by(p.port))
                    .collect::<Result<HashSet<u16>, String>>()?;
                let new_master = match reported.iter().collect::<Vec<_>>()[..] {
                    [&port] if port != old_master => port,
                    _ => return Err(format!("sentinels report masters {reported:?}")),
                };
                let replication = info_fields(new_master, &["INFO", "replication"])?;
                match replication.get("role").map(String::as_str) {
                    Some("master") => Ok(new_master),
                    role => Err(format!("{new_master} reports role {role:?}")),
                }
            },
        )
    }
}
