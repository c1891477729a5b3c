//! The topology harness (`common/topology.rs`) on its own, without the engine: a cluster and a
//! sentinel group start, serve, fail over and leave nothing running. ~5 s in all.

mod common;
// Until `common/mod.rs` declares `pub mod topology;`, the harness is compiled here; it reaches
// `free_port` as `super::free_port`, hence the import.
#[path = "common/topology.rs"]
mod topology;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::free_port;
use redis::Commands;
use topology::{Cluster, Role, SentinelGroup};

const HOST: &str = "127.0.0.1";

fn connect(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://{HOST}:{port}/"))
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(1))
        .unwrap()
}

/// Whether a replica acknowledged every write made on this connection (WAIT, up to 2 s).
fn replicated(connection: &mut redis::Connection) -> bool {
    let acknowledged: usize = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query(connection)
        .unwrap();
    acknowledged >= 1
}

fn is_listening(port: u16) -> bool {
    std::net::TcpStream::connect((HOST, port)).is_ok()
}

#[test]
fn cluster_serves_every_slot_and_fails_over_to_a_replica() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3, 1);
    eprintln!(
        "cluster of 3 masters + 3 replicas ready in {:?}",
        started.elapsed()
    );

    let masters: Vec<u16> = cluster
        .nodes()
        .iter()
        .filter(|node| node.role == Role::Master)
        .map(|node| node.port)
        .collect();
    assert_eq!(masters.len(), 3);
    for replica in cluster
        .nodes()
        .iter()
        .filter(|node| node.role == Role::Replica)
    {
        assert!(
            replica
                .master_port
                .is_some_and(|port| masters.contains(&port))
        );
        assert_eq!(replica.id.len(), 40, "a cluster node id");
    }
    let urls = cluster.startup_urls();
    assert_eq!(urls.len(), 6);
    assert!(urls.iter().all(|url| url.starts_with("redis://127.0.0.1:")));

    // Keys land on every master, each node redirects to the master the harness names.
    let mut owners = HashSet::new();
    for i in 0..30 {
        let key = format!("key:{i}");
        let owner = cluster.master_for_key(&key);
        let _: () = connect(owner).set(&key, "value").unwrap();
        owners.insert(owner);
    }
    assert_eq!(owners, masters.iter().copied().collect());
    for &master in &masters {
        assert!(
            replicated(&mut connect(master)),
            "master {master} has an acknowledging replica"
        );
    }
    let victim = cluster.master_for_key("key:0");
    let elsewhere = *masters.iter().find(|&&port| port != victim).unwrap();
    let moved = connect(elsewhere).get::<_, String>("key:0").unwrap_err();
    let victim_address = format!("{HOST}:{victim}");
    let redirected_to = moved.redirect_node().map(|(address, _slot)| address);
    assert_eq!(redirected_to, Some(victim_address.as_str()));
    assert_eq!(
        cluster.master_for_slot(0),
        cluster.master_for_key("{06S}"),
        "slot 0"
    );

    let started = Instant::now();
    cluster.kill_master(victim);
    let successor = cluster.wait_for_failover(victim, Duration::from_secs(15));
    eprintln!(
        "cluster failover from {victim} to {successor} in {:?}",
        started.elapsed()
    );
    let successor_node = cluster
        .nodes()
        .iter()
        .find(|node| node.port == successor)
        .unwrap();
    assert_eq!(
        successor_node.master_port,
        Some(victim),
        "its replica took over"
    );
    assert_eq!(cluster.master_for_key("key:0"), successor);
    let mut connection = connect(successor);
    assert_eq!(connection.get::<_, String>("key:0").unwrap(), "value");
    let _: () = connection.set("key:0", "after the failover").unwrap();

    let ports: Vec<u16> = cluster.nodes().iter().map(|node| node.port).collect();
    drop(cluster);
    assert!(
        !ports.iter().any(|&port| is_listening(port)),
        "no node survives the drop"
    );
}

#[test]
fn sentinel_group_follows_a_forced_failover() {
    let started = Instant::now();
    let group = SentinelGroup::start(3, 1);
    eprintln!(
        "sentinel group of 3 sentinels + 1 replica ready in {:?}",
        started.elapsed()
    );

    let sentinels = group.sentinel_addrs();
    assert_eq!(sentinels.len(), 3);
    assert!(sentinels.iter().all(|(host, _)| host == HOST));
    assert_eq!(group.current_master(), group.master_port());
    let mut connection = connect(group.master_port());
    let _: () = connection.set("key", "value").unwrap();
    assert!(replicated(&mut connection));

    let started = Instant::now();
    let new_master = group.failover(Duration::from_secs(15));
    eprintln!(
        "sentinel failover from {} to {new_master} in {:?}",
        group.master_port(),
        started.elapsed()
    );
    assert_eq!(vec![new_master], group.replica_ports());
    for (_, port) in &sentinels {
        let (_, reported): (String, u16) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(group.master_name())
            .query(&mut connect(*port))
            .unwrap();
        assert_eq!(reported, new_master, "sentinel {port}");
    }
    let mut connection = connect(new_master);
    assert_eq!(connection.get::<_, String>("key").unwrap(), "value");
    let _: () = connection.set("key", "after the failover").unwrap();

    let ports: Vec<u16> = [group.master_port()]
        .into_iter()
        .chain(group.replica_ports())
        .chain(sentinels.iter().map(|&(_, port)| port))
        .collect();
    drop(group);
    assert!(
        !ports.iter().any(|&port| is_listening(port)),
        "no process survives the drop"
    );
}
