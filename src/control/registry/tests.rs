use super::*;

fn registry() -> Registry {
    let cluster: ClusterConfig = serde_json::from_str(r#"{"name":"c"}"#).unwrap();
    Registry::new(&[cluster], 2)
}

fn id(name: &str) -> HostIdentity {
    HostIdentity {
        host_name: name.into(),
        agent_id: format!("{name}-id"),
        legacy: false,
    }
}

const PEER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    1,
));

#[test]
fn host_lives_while_it_has_connections() {
    let mut r = registry();
    let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    assert!(a.snapshot_changed);
    let b = r.register("c", id("a"), 1, Role::Aside, PEER).unwrap();
    assert!(!b.snapshot_changed);
    assert_eq!(a.host_id, b.host_id);
    assert!(!r.conn_closed(a.conn_id));
    assert_eq!(r.hosts("c").len(), 1);
    assert!(r.conn_closed(b.conn_id));
    assert!(r.hosts("c").is_empty());
}

#[test]
fn only_a_hosts_first_connection_is_new_host() {
    let mut r = registry();
    let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    assert!(a.new_host);
    let b = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    assert!(!b.new_host);
    assert!(!r.conn_closed(a.conn_id));
    assert!(r.conn_closed(b.conn_id));
    // Every connection gone: the next one creates the host again.
    let c = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    assert!(c.new_host);
}

#[test]
fn unknown_cluster_registers_nothing() {
    assert_eq!(
        registry().register("nope", id("a"), 1, Role::Data, PEER),
        Err(RegisterError::NoCluster)
    );
}

#[test]
fn idle_connections_spread_over_workers() {
    let mut r = registry();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let reg = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
        workers.push(r.assign_worker(reg.conn_id).unwrap());
    }
    workers.sort();
    assert_eq!(workers, vec![0, 0, 1, 1]);
    assert_eq!(r.hosts("c")[0].idle_connections, 4);
}

#[test]
fn donor_is_the_fullest_other_worker() {
    let mut r = registry();
    let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    assert_eq!(r.assign_worker(a.conn_id), Some(0));
    assert_eq!(r.donor_for("c", 1), Some((a.host_id, 0)));
    assert_eq!(r.donor_for("c", 0), None);
    r.reassign(a.conn_id, 1);
    assert_eq!(r.hosts("c")[0].idle_per_worker, vec![0, 1]);
    assert_eq!(r.donor_for("c", 0), Some((a.host_id, 1)));
}

#[test]
fn leased_connections_count_as_active_on_their_worker() {
    let mut r = registry();
    let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    let b = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    assert_eq!(r.assign_worker(a.conn_id), Some(0));
    assert_eq!(r.assign_worker(b.conn_id), Some(1));
    r.conn_leased(b.conn_id);
    let h = &r.clusters()[0].hosts[0];
    assert_eq!(h.idle_per_worker, vec![1, 0]);
    assert_eq!(h.active_per_worker, vec![0, 1]);
    r.conn_closed(b.conn_id);
    assert_eq!(r.clusters()[0].hosts[0].active_per_worker, vec![0, 0]);
}

#[test]
fn a_join_is_unpublished_until_its_changes_are_taken() {
    let mut r = registry();
    let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    assert!(!r.hosts("c")[0].published);
    assert!(r.take_changes().is_some());
    assert!(r.hosts("c")[0].published);
    // Another connection of the same host changes nothing workers see.
    r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    assert!(r.hosts("c")[0].published);
    assert!(r.is_live(a.conn_id));
}

#[test]
fn a_connection_named_for_closing_or_gone_is_not_live() {
    let mut r = registry();
    let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    let b = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    r.graceful_close(a.host_id, &[a.conn_id]);
    assert!(!r.is_live(a.conn_id));
    assert!(r.is_live(b.conn_id));
    r.conn_closed(b.conn_id);
    assert!(!r.is_live(b.conn_id));
}

#[test]
fn graceful_close_names_only_the_hosts_own_data_connections_idle_or_leased() {
    let mut r = registry();
    let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    let a2 = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    let b = r.register("c", id("b"), 1, Role::Data, PEER).unwrap();
    r.assign_worker(a.conn_id);
    r.assign_worker(a2.conn_id);
    r.assign_worker(b.conn_id);
    r.conn_leased(a2.conn_id);
    let close = r.graceful_close(a.host_id, &[a.conn_id, a2.conn_id, b.conn_id]);
    // The leased one goes to its worker too, which closes it when its session ends.
    assert_eq!(
        close.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
        vec![a.conn_id, a2.conn_id]
    );
    assert!(r.is_closing(a2.conn_id));
    assert!(!r.is_closing(b.conn_id));
}

#[test]
fn admin_weight_wins_until_cleared_and_drain_publishes_zero() {
    let mut r = registry();
    let a = r.register("c", id("a"), 4, Role::Data, PEER).unwrap();
    assert!(r.override_weight(a.host_id, Some(9)));
    // A re-dial announcing the agent's weight does not undo the admin's.
    assert!(
        !r.register("c", id("a"), 4, Role::Data, PEER)
            .unwrap()
            .snapshot_changed
    );
    assert_eq!(r.snapshot().clusters["c"].hosts[0].weight, 9);
    assert!(!r.set_weight(a.host_id, 5));
    assert!(r.override_weight(a.host_id, None));
    assert_eq!(r.snapshot().clusters["c"].hosts[0].weight, 5);
    r.drain_host(a.host_id).unwrap();
    assert_eq!(r.snapshot().clusters["c"].hosts[0].weight, 0);
}

#[test]
fn reload_keeps_unchanged_clusters_and_empties_removed_ones() {
    let mut r = registry();
    let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    r.assign_worker(a.conn_id);
    let d: ClusterConfig = serde_json::from_str(r#"{"name":"d"}"#).unwrap();
    let c: ClusterConfig = serde_json::from_str(r#"{"name":"c","pool_wait_ms":7}"#).unwrap();
    let (close, hosts) = r.replace_clusters(&[c.clone(), d.clone()]);
    assert!(close.is_empty() && hosts.is_empty());
    assert_eq!(r.cluster("c").unwrap().pool_wait_ms, 7);
    assert_eq!(r.hosts("c").len(), 1);
    let (close, hosts) = r.replace_clusters(&[d]);
    assert_eq!(close, vec![(0, a.conn_id)]);
    assert_eq!(hosts, vec![a.host_id]);
    assert!(r.cluster("c").is_none());
    assert!(!r.conn_closed(a.conn_id));
}

#[test]
fn data_connection_limits_per_agent_and_per_cluster() {
    let cluster: ClusterConfig = serde_json::from_str(
        r#"{"name":"c","max_data_connections_per_agent":2,"max_data_connections":3}"#,
    )
    .unwrap();
    let mut r = Registry::new(&[cluster], 1);
    r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    let a2 = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    assert_eq!(
        r.register("c", id("a"), 1, Role::Data, PEER),
        Err(RegisterError::AgentLimit(2))
    );
    // Aside connections are not data connections.
    r.register("c", id("a"), 1, Role::Aside, PEER).unwrap();
    r.register("c", id("b"), 1, Role::Data, PEER).unwrap();
    assert_eq!(
        r.register("c", id("b"), 1, Role::Data, PEER),
        Err(RegisterError::ClusterLimit(3))
    );
    // A host refused its first connection is not left behind.
    assert_eq!(
        r.register("c", id("z"), 1, Role::Data, PEER),
        Err(RegisterError::ClusterLimit(3))
    );
    assert_eq!(r.hosts("c").len(), 2);
    r.conn_closed(a2.conn_id);
    r.register("c", id("b"), 1, Role::Data, PEER).unwrap();
}

#[test]
fn weight_change_republishes() {
    let mut r = registry();
    r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    let again = r.register("c", id("a"), 5, Role::Data, PEER).unwrap();
    assert!(again.snapshot_changed);
    assert_eq!(r.snapshot().clusters["c"].hosts[0].weight, 5);
}

#[test]
fn mosn_graceful_close_names_only_legacy_data_connections_by_address() {
    let mut r = registry();
    let mosn = HostIdentity {
        host_name: String::new(),
        agent_id: "mosn@127.0.0.1".into(),
        legacy: true,
    };
    let a: SocketAddr = "127.0.0.1:5001".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:5002".parse().unwrap();
    let named = r.register("c", mosn.clone(), 10, Role::Data, a).unwrap();
    let other = r.register("c", mosn, 10, Role::Data, b).unwrap();
    // A ringtun agent's connection from the same address is never named by address.
    let ringtun = r.register("c", id("r"), 1, Role::Data, a).unwrap();
    for c in [named.conn_id, other.conn_id, ringtun.conn_id] {
        r.assign_worker_preferring(c, Some(1));
    }
    assert!(r.legacy_source(a.ip()));
    assert!(!r.legacy_source("10.0.0.1".parse().unwrap()));
    assert_eq!(r.graceful_close_legacy("nope", &[a]), (vec![], 0));
    let (close, count) = r.graceful_close_legacy("c", &[a]);
    assert_eq!((close, count), (vec![(1, named.conn_id)], 1));
    assert!(r.is_closing(named.conn_id));
    assert!(!r.is_closing(other.conn_id));
    assert!(!r.is_closing(ringtun.conn_id));
}

/// The changed slots of cluster "c", as (slot, host id, weight).
fn changes(r: &mut Registry) -> Vec<(HostSlot, HostId, u32)> {
    r.take_changes()
        .map(|c| {
            c.clusters
                .into_iter()
                .flat_map(|(_, c)| c.hosts)
                .map(|(s, h)| (s, h.id, h.weight))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn changes_name_only_the_slots_that_changed() {
    let mut r = registry();
    assert!(r.take_changes().is_none());
    let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    let b = r.register("c", id("b"), 2, Role::Data, PEER).unwrap();
    assert_eq!(changes(&mut r), vec![(0, a.host_id, 1), (1, b.host_id, 2)]);
    // A second connection of a known host with the same weight changes nothing.
    let b2 = r.register("c", id("b"), 2, Role::Data, PEER).unwrap();
    assert!(r.take_changes().is_none());
    assert!(r.set_weight(b.host_id, 3));
    assert!(r.set_weight(b.host_id, 4));
    assert_eq!(changes(&mut r), vec![(1, b.host_id, 4)]);
    // A host leaving publishes its slot vacant; a new host reuses the slot.
    assert!(r.conn_closed(a.conn_id));
    assert_eq!(changes(&mut r), vec![(0, 0, 0)]);
    let c = r.register("c", id("c"), 7, Role::Data, PEER).unwrap();
    assert_eq!(changes(&mut r), vec![(0, c.host_id, 7)]);
    r.drain_host(c.host_id).unwrap();
    assert_eq!(changes(&mut r), vec![(0, c.host_id, 0)]);
    // The whole snapshot holds every slot and supersedes pending changes.
    assert!(!r.conn_closed(b2.conn_id));
    assert!(r.set_weight(b.host_id, 9));
    let s = r.snapshot();
    assert_eq!(s.clusters["c"].hosts.len(), 2);
    assert_eq!(s.clusters["c"].hosts[1].weight, 9);
    assert!(r.take_changes().is_none());
}

#[test]
fn hosts_are_found_by_identity_even_when_keys_collide() {
    let mut r = registry();
    let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    // Pretend "b" hashes like "a": its key's index entry names a.
    let state = r.clusters.get_mut("c").unwrap();
    let key_b = host_key(&id("b"));
    state.by_key.insert(key_b, a.host_id);
    let b = r.register("c", id("b"), 1, Role::Data, PEER).unwrap();
    assert!(b.new_host);
    assert_ne!(a.host_id, b.host_id);
    let again = r.register("c", id("b"), 1, Role::Data, PEER).unwrap();
    assert_eq!(again.host_id, b.host_id);
    assert_eq!(
        r.register("c", id("a"), 1, Role::Data, PEER)
            .unwrap()
            .host_id,
        a.host_id
    );
    // b leaves: found no more, a still is.
    assert!(!r.conn_closed(b.conn_id));
    assert!(r.conn_closed(again.conn_id));
    let b3 = r.register("c", id("b"), 1, Role::Data, PEER).unwrap();
    assert!(b3.new_host);
}

#[test]
fn a_host_refused_by_its_agent_limit_is_not_created() {
    let cluster: ClusterConfig =
        serde_json::from_str(r#"{"name":"c","max_data_connections_per_agent":0}"#).unwrap();
    let mut r = Registry::new(&[cluster], 1);
    assert_eq!(
        r.register("c", id("a"), 1, Role::Data, PEER),
        Err(RegisterError::AgentLimit(0))
    );
    assert!(r.hosts("c").is_empty());
    assert!(r.take_changes().is_none());
}

#[test]
fn only_workers_holding_a_changed_hosts_idle_connections_are_woken() {
    let mut r = registry();
    let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    // A join wakes nobody (its connection's worker catches up when it adopts it).
    assert_eq!(r.take_changes().unwrap().wake, Vec::<usize>::new());
    assert_eq!(r.assign_worker(a.conn_id), Some(0));
    // Between positive weights: published, but the worker applies it before its next lease.
    assert!(r.set_weight(a.host_id, 2));
    assert_eq!(r.take_changes().unwrap().wake, Vec::<usize>::new());
    // To 0 and back: the host stops and starts being pickable, its idle connection's worker
    // is woken each time.
    assert!(r.set_weight(a.host_id, 0));
    assert_eq!(r.take_changes().unwrap().wake, vec![0]);
    assert!(r.set_weight(a.host_id, 2));
    assert_eq!(r.take_changes().unwrap().wake, vec![0]);
    // Leased: no idle connection anywhere, nobody to wake.
    r.conn_leased(a.conn_id);
    assert!(r.set_weight(a.host_id, 0));
    assert_eq!(r.take_changes().unwrap().wake, Vec::<usize>::new());
    let b = r.register("c", id("a"), 3, Role::Data, PEER).unwrap();
    r.assign_worker_preferring(b.conn_id, Some(1));
    r.drain_host(a.host_id).unwrap();
    assert_eq!(r.take_changes().unwrap().wake, vec![1]);
}

#[test]
fn a_returned_connection_is_idle_again_and_counts_its_sessions() {
    let mut r = registry();
    let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    assert_eq!(r.assign_worker(a.conn_id), Some(0));
    for worker in [0, 1, 1] {
        r.conn_leased(a.conn_id);
        let h = &r.clusters()[0].hosts[0];
        assert_eq!(h.idle_per_worker, vec![0, 0]);
        assert_eq!(h.active_per_worker.iter().sum::<u32>(), 1);
        // Back idle on the worker that ran the session.
        assert!(r.conn_returned(a.conn_id, worker));
    }
    let h = &r.clusters()[0].hosts[0];
    assert_eq!(h.idle_per_worker, vec![0, 1]);
    assert_eq!(h.active_per_worker, vec![0, 0]);
    assert_eq!(h.sessions_per_data_connection, vec![3]);
}

#[test]
fn a_connection_named_for_closing_mid_session_is_not_returned() {
    let mut r = registry();
    let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
    r.assign_worker(a.conn_id);
    r.conn_leased(a.conn_id);
    let host = r.clusters()[0].hosts[0].id;
    r.drain_host(host);
    assert!(!r.conn_returned(a.conn_id, 0));
    assert_eq!(r.clusters()[0].hosts[0].idle_per_worker, vec![0, 0]);
    assert!(!r.conn_returned(999, 0), "an unknown connection");
}
