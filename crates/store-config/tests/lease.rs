//! The lease settings of the `store` table take effect (real 3-member etcd cluster on
//! loopback, pr-store-etcd's harness): a host fence started with the timings a configuration
//! text gives holds a lease of the configured TTL in etcd, keeps its validity within the
//! configured bound, and, cut off from etcd by proxies, stops media I/O no later than the
//! configured bound after the cut — well before the defaults would let it — and only then
//! loses its lease in etcd; healed, it is granted a new lease and allows I/O again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pr_store::SqliteOptions;
use pr_store_config::{OpenedStore, StoreSelection, StoreSetting};
use pr_store_etcd::cluster::{Cluster, Timing};
use pr_store_etcd::fence::{HostFence, LeaseTiming};
use pr_store_etcd::proxy::Proxy;
use pr_store_etcd::{EtcdConfig, EtcdStore};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    store: StoreSetting,
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_configured_short_lease_closes_a_partitioned_hosts_fence_within_its_bound() {
    let cluster = Cluster::start(3, Timing::FAST).expect("etcd cluster");
    let proxies: Vec<Proxy> = cluster.proxies().unwrap();
    let endpoints = proxies
        .iter()
        .map(|p| format!("{:?}", p.url()))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "[store]\nkind = \"etcd\"\nendpoints = [{endpoints}]\nprefix = \"/lease-config/\"\n\
         host_id = \"hv-short\"\nrequest_timeout_ms = 500\ncommand_timeout_ms = 2000\n\
         lease_ttl_s = 2\nlease_renew_ms = 200\nlease_margin_ms = 300\nclock_drift_ppm = 10000\n"
    );
    let file: File = toml::from_str(&text).unwrap();
    let selection = file.store.resolve("store", "/unused.db").unwrap();
    let StoreSelection::Etcd { config, .. } = &selection else {
        panic!("not etcd: {selection:?}")
    };
    let timing = config.lease.expect("the lease settings");
    assert_ne!(timing, LeaseTiming::default());
    // 2 s × (1 − 1 %) − 300 ms.
    let bound = timing.validity();
    assert_eq!(bound, Duration::from_millis(1680));
    assert!(bound < LeaseTiming::default().validity());
    let OpenedStore::Etcd(store) = selection.open(SqliteOptions::default()).unwrap() else {
        panic!("not an etcd store")
    };
    let fence = HostFence::start(Arc::clone(&store), timing).unwrap();
    let mut c = EtcdConfig::new(cluster.endpoints());
    c.prefix = "/lease-config/".into();
    let observer = EtcdStore::open(c).unwrap();

    wait_for(
        "the fence allowing media I/O",
        Duration::from_secs(10),
        || fence.media_allowed(),
    );
    // etcd granted the configured TTL (its minimum here is 1.5 × 500 ms), as it reports to
    // an observer too.
    assert_eq!(fence.granted_ttl(), Duration::from_secs(2));
    let hosts = observer.host_leases().unwrap();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(hosts[0].lease, fence.lease_id());
    assert_eq!(hosts[0].granted_ttl, Some(Duration::from_secs(2)));
    // Renewals every 200 ms; each extends the validity to at most the configured bound past
    // the instant it was measured from (before the keep-alive was sent, before now).
    let renewed = fence.renewals();
    wait_for("three more renewal rounds", Duration::from_secs(10), || {
        fence.renewals() >= renewed + 3
    });
    let v = fence.valid_until().expect("a validity");
    assert!(
        v <= Instant::now() + bound,
        "the validity reaches {:?} ahead, beyond the configured {bound:?}",
        v - Instant::now()
    );

    for p in &proxies {
        p.cut();
    }
    let cut = Instant::now();
    wait_for(
        "the partitioned host stopping media I/O",
        bound + Duration::from_secs(10),
        || !fence.media_allowed(),
    );
    let stopped = fence.valid_until().expect("a validity");
    assert!(
        stopped <= cut + bound,
        "media I/O allowed until {:?} after the cut, beyond the configured {bound:?}",
        stopped - cut
    );
    // Then etcd expires the lease (the observer is not cut off).
    let id = fence.lease_id();
    wait_for(
        "etcd expiring the partitioned host's lease",
        Duration::from_secs(20),
        || matches!(observer.lease_remaining(id), Ok(None)),
    );
    assert!(!fence.media_allowed());

    for p in &proxies {
        p.heal();
    }
    wait_for(
        "the healed host allowing media I/O on a new lease",
        Duration::from_secs(20),
        || fence.media_allowed(),
    );
    assert_ne!(fence.lease_id(), id);
    assert_eq!(fence.grants(), 2);
    assert_eq!(fence.granted_ttl(), Duration::from_secs(2));
}
