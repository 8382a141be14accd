use std::path::Path;

use super::*;

const CONFIG: &str = r#"
[gateway]
interfaces = ["gw0"]

[announce]
mechanism = "kernel-table"
table = 100
etcd_grace = "300ms"
return_routes = ["198.18.20.0/24"]

[[server]]
name = "p1"
address = "198.18.2.10"

[[server]]
name = "b1"
address = "198.18.3.10"

[[resource]]
name = "web"
vip = "198.18.100.1"
protocol = "tcp"
ports = [80]
servers = ["p1", "b1"]

[[resource]]
name = "dns"
vip = "198.18.100.1"
protocol = "udp"
ports = [53]
servers = ["p1"]

[[resource]]
name = "keep"
vip = "198.18.100.2"
protocol = "tcp"
ports = [8080]
servers = ["b1"]
withdraw_without_server = false

[[resource]]
name = "gone"
vip = "198.18.100.3"
protocol = "tcp"
ports = [443]
servers = ["b1"]
"#;

fn config() -> Arc<Config> {
    Arc::new(crate::config::parse(CONFIG, Path::new("t.toml")).unwrap())
}

fn record(name: &str, current: Option<&str>) -> ResourceRecord {
    ResourceRecord {
        name: name.into(),
        id: 0,
        servers: vec![],
        current: current.map(Into::into),
        pinned: None,
        generation: 0,
        since_ms: 0,
        reason: String::new(),
    }
}

/// web on p1, dns and keep and gone without a live server.
fn resources() -> imbl::OrdMap<String, Arc<ResourceRecord>> {
    [
        record("web", Some("p1")),
        record("dns", None),
        record("keep", None),
        record("gone", None),
    ]
    .into_iter()
    .map(|r| (r.name.clone(), Arc::new(r)))
    .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_vip_is_wanted_while_one_of_its_resources_has_a_server_or_keeps_it() {
    let w = wanted(&config(), &resources());
    let by: BTreeMap<IpAddr, &VipState> = w.iter().map(|v| (v.vip, v)).collect();
    assert_eq!(by.len(), 3);
    let shared = by[&ip("198.18.100.1")];
    assert!(shared.wanted, "{shared:?}");
    assert_eq!(shared.why, "web on p1; dns has no live server");
    assert!(by[&ip("198.18.100.2")].wanted);
    assert!(by[&ip("198.18.100.2")]
        .why
        .contains("withdraw_without_server = false"));
    assert!(!by[&ip("198.18.100.3")].wanted);
    // No server for web either: the shared VIP goes.
    let mut r = resources();
    r.insert("web".into(), Arc::new(record("web", None)));
    let w = wanted(&config(), &r);
    assert!(
        !w.iter()
            .find(|v| v.vip == ip("198.18.100.1"))
            .unwrap()
            .wanted
    );
}

fn inputs(maps_ready: bool, etcd: Option<(bool, u64)>) -> Inputs {
    Inputs {
        config: config(),
        resources: resources(),
        maps_ready,
        etcd,
    }
}

#[test]
fn the_gateway_withholds_while_starting_detached_or_cut_off_from_etcd_past_the_grace() {
    let stats = SyncStats::default();
    let now = 1_000_000;
    assert!(withheld(&inputs(false, None), &stats, now)
        .unwrap()
        .starts_with("starting"));
    assert_eq!(withheld(&inputs(true, None), &stats, now), None);
    assert_eq!(
        withheld(&inputs(true, Some((true, now - 9_000))), &stats, now),
        None
    );
    // Lost 299 ms ago: still in the 300 ms grace; 300 ms: over.
    assert_eq!(
        withheld(&inputs(true, Some((false, now - 299))), &stats, now),
        None
    );
    let why = withheld(&inputs(true, Some((false, now - 300))), &stats, now).unwrap();
    assert!(why.contains("etcd lost 0.3 s ago"), "{why}");
    // etcd_grace = "never".
    let mut i = inputs(true, Some((false, 0)));
    let mut c = (*i.config).clone();
    c.announce.as_mut().unwrap().etcd_grace = None;
    i.config = Arc::new(c);
    assert_eq!(withheld(&i, &stats, now), None);
    stats
        .interfaces
        .lock()
        .unwrap()
        .push(crate::dataplane::InterfaceState {
            name: "gw0".into(),
            ifindex: None,
            attached: false,
            note: Some("no interface has this name".into()),
        });
    let why = withheld(&inputs(true, None), &stats, now).unwrap();
    assert_eq!(
        why,
        "interface gw0 has no XDP program attached (no interface has this name)"
    );
}

/// A table in memory (what the kernel table holds), shared with the test.
#[derive(Clone, Default)]
struct MemoryTable(Arc<Mutex<BTreeSet<Prefix>>>);

#[async_trait::async_trait]
impl RouteTable for MemoryTable {
    async fn list(&mut self) -> Result<BTreeSet<Prefix>, String> {
        Ok(self.0.lock().unwrap().clone())
    }
    async fn add(&mut self, route: Prefix) -> Result<(), String> {
        self.0.lock().unwrap().insert(route);
        Ok(())
    }
    async fn remove(&mut self, route: Prefix) -> Result<(), String> {
        self.0.lock().unwrap().remove(&route);
        Ok(())
    }
}

impl MemoryTable {
    fn holds(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    fn insert(&self, route: &str) {
        self.0.lock().unwrap().insert(route.parse().unwrap());
    }
}

/// Waits (real time, bounded) until the table holds `want`.
async fn wait_table(t: &MemoryTable, want: &[&str], within: Duration) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let end = std::time::Instant::now() + within;
    while t.holds() != want {
        assert!(
            std::time::Instant::now() < end,
            "table holds {:?}, expected {want:?} within {within:?}",
            t.holds()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The margin of the waits below: the task runs on this test's runtime, nothing else waits.
const MARGIN: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_restart_keeps_the_routes_until_the_maps_hold_the_directory_then_reconciles() {
    let table = MemoryTable::default();
    table.insert("198.18.100.1/32");
    table.insert("198.18.100.9/32");
    let stop = CancellationToken::new();
    let a = Announcer::spawn(
        Box::new(table.clone()),
        100,
        Arc::new(SyncStats::default()),
        true,
        stop.clone(),
    );
    a.update(inputs(false, None));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(table.holds(), ["198.18.100.1/32", "198.18.100.9/32"]);
    assert!(a.status().pending);
    a.update(inputs(true, None));
    // .9 is no VIP of the configuration; .3 has no live server; .2 keeps its announcement;
    // the return route is announced while the gateway serves.
    wait_table(
        &table,
        &["198.18.20.0/24", "198.18.100.1/32", "198.18.100.2/32"],
        MARGIN,
    )
    .await;
    let st = a.status();
    assert!(!st.pending && st.withheld.is_none(), "{st:?}");
    assert_eq!((st.routes_added, st.routes_removed), (2, 1));
    assert_eq!(
        st.return_routes,
        [("198.18.20.0/24".parse().unwrap(), true)]
    );
    assert_eq!(
        st.vips.iter().filter(|v| v.announced).count(),
        2,
        "{:?}",
        st.vips
    );
    stop.cancel();
}

#[tokio::test]
async fn a_fresh_dataplane_clears_the_table_and_etcd_loss_withdraws_after_the_grace() {
    let table = MemoryTable::default();
    table.insert("198.18.100.1/32");
    let stop = CancellationToken::new();
    let a = Announcer::spawn(
        Box::new(table.clone()),
        100,
        Arc::new(SyncStats::default()),
        false,
        stop.clone(),
    );
    wait_table(&table, &[], MARGIN).await;
    let now = crate::directory::now_ms();
    a.update(inputs(true, Some((true, now))));
    wait_table(
        &table,
        &["198.18.20.0/24", "198.18.100.1/32", "198.18.100.2/32"],
        MARGIN,
    )
    .await;
    // etcd lost now: the routes stay for the 300 ms grace, then go without another input.
    let lost = std::time::Instant::now();
    a.update(inputs(true, Some((false, crate::directory::now_ms()))));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(table.holds().len(), 3, "withdrawn inside the grace time");
    wait_table(&table, &[], Duration::from_millis(300) + MARGIN).await;
    assert!(lost.elapsed() >= Duration::from_millis(300));
    assert!(a.status().withheld.unwrap().contains("etcd lost"));
    // etcd back: announced again.
    a.update(inputs(true, Some((true, crate::directory::now_ms()))));
    wait_table(
        &table,
        &["198.18.20.0/24", "198.18.100.1/32", "198.18.100.2/32"],
        MARGIN,
    )
    .await;
    stop.cancel();
}
