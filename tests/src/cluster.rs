//! The cluster lab: three ftn gateways that share one directory on a real three-member etcd
//! cluster, with one client, one primary and one backup reachable through every gateway.
//!
//! ```text
//! client ns           gateway k ns (k = 1, 2, 3)           primary ns / backup ns
//! ck 198.18.1k.10 --- gc 198.18.1k.1
//!                     gp 198.18.(60+k).1 ----------------- pk 198.18.(60+k).10
//!                     gb 198.18.(70+k).1 ----------------- bk 198.18.(70+k).10
//!                     ge 198.18.21k.2 --- ek 198.18.21k.1 (etcd ns)
//!
//! primary ns: service address 198.18.50.1/32 (on lo); backup ns: 198.18.50.2/32 (on lo).
//! etcd ns: members m1, m2, m3 on 198.18.200.1, .2, .3 (on lo), peer port 2380,
//! client port 2379; each gateway routes 198.18.200.0/24 via its etcd link.
//! VIP 198.18.100.1 (tcp/80): the client reaches it through gateway k from 198.18.1k.10
//! (`ip rule from 198.18.1k.10 table 10k`), through gateway 1 from any other source.
//! ```
//!
//! The XDP interfaces of every gateway are `gc`, `gp` and `gb` (same names in each gateway's
//! namespace, so the three configurations differ only in the gateway's name, pin directory
//! and token file); the etcd link `ge` carries only the kernel's own traffic. Each server
//! routes every client address back through the gateway of that client address, so a reply
//! returns through the gateway that DNATed its request.
//!
//! Everything is removed on drop, also when a test panics: the controllers (killed, their
//! pinned dataplanes detached), the services, the pass-through programs, the etcd members
//! (killed by pid), the namespaces (with every link inside them) and the temporary directory
//! (etcd data, nft scripts).

use std::{
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::timing::{Timing, MARGIN, START};
use crate::{
    ftn::{tail, Ftn, Prober},
    lab::{in_ns, try_in_ns, veth, Conn, Service},
    load_pass, pass_program, require_root, run_quiet, unique_name, Netns,
};

/// The resource `web`'s VIP (tcp/80).
pub const VIP: &str = "198.18.100.1";
/// The primary's (only) service address.
pub const PRIMARY_ADDR: &str = "198.18.50.1";
/// The backup's (only) service address.
pub const BACKUP_ADDR: &str = "198.18.50.2";
pub const GATEWAYS: usize = 3;
pub const MEMBERS: usize = 3;
/// The API of every gateway (each in its own namespace).
pub const API_LISTEN: &str = "127.0.0.1:9180";
pub const ETCD_BIN: &str = "/usr/bin/etcd";
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";
/// The nft table `cut_etcd` adds in a gateway's namespace.
const CUT_TABLE: &str = "ftn_cut_etcd";

/// `gw1`, `gw2`, `gw3`.
pub fn gw_name(k: usize) -> String {
    check_gw(k);
    format!("gw{k}")
}

/// The client's address on its link to gateway k: 198.18.1k.10.
pub fn client_addr(k: usize) -> IpAddr {
    check_gw(k);
    format!("198.18.1{k}.10").parse().unwrap()
}

/// Gateway k's address on its client link: 198.18.1k.1.
pub fn client_gw(k: usize) -> String {
    check_gw(k);
    format!("198.18.1{k}.1")
}

/// The third octet of the link between gateway k and a server: 60+k (primary), 70+k (backup).
fn server_net(which: &str, k: usize) -> usize {
    check_gw(k);
    match which {
        "primary" => 60 + k,
        "backup" => 70 + k,
        _ => panic!("no server {which:?} in the cluster lab (primary or backup)"),
    }
}

/// A server's service address by name.
fn server_addr(which: &str) -> &'static str {
    match which {
        "primary" => PRIMARY_ADDR,
        "backup" => BACKUP_ADDR,
        _ => panic!("no server {which:?} in the cluster lab (primary or backup)"),
    }
}

/// Gateway k's interface towards a server.
fn server_dev(which: &str) -> &'static str {
    match which {
        "primary" => "gp",
        "backup" => "gb",
        _ => panic!("no server {which:?} in the cluster lab (primary or backup)"),
    }
}

/// Etcd member i's address: 198.18.200.i.
pub fn member_ip(i: usize) -> String {
    check_member(i);
    format!("198.18.200.{i}")
}

pub fn member_client_url(i: usize) -> String {
    format!("http://{}:2379", member_ip(i))
}

fn member_peer_url(i: usize) -> String {
    format!("http://{}:2380", member_ip(i))
}

/// The client URLs of these members, comma-separated (etcdctl's `--endpoints`).
pub fn endpoints_of(members: &[usize]) -> String {
    members
        .iter()
        .map(|&i| member_client_url(i))
        .collect::<Vec<_>>()
        .join(",")
}

fn all_members() -> Vec<usize> {
    (1..=MEMBERS).collect()
}

fn check_gw(k: usize) {
    assert!(
        (1..=GATEWAYS).contains(&k),
        "gateway {k}: the lab has gateways 1 to {GATEWAYS}"
    );
}

fn check_member(i: usize) {
    assert!(
        (1..=MEMBERS).contains(&i),
        "etcd member {i}: the lab has members 1 to {MEMBERS}"
    );
}

/// The pass-through XDP program on every (namespace, interface) of `targets` (one object, one
/// link each): a frame redirected into a veth is delivered only when its peer runs XDP.
pub(crate) fn attach_pass_programs(targets: Vec<(String, String)>) -> aya::Ebpf {
    std::thread::spawn(move || {
        let mut ebpf = load_pass();
        for (ns, dev) in targets {
            let ns = borrowed_ns(&ns);
            let _in = ns.enter();
            pass_program(&mut ebpf)
                .attach(&dev, aya::programs::XdpMode::Driver)
                .unwrap_or_else(|e| panic!("attach ftn_pass to {dev} in {}: {e}", ns.name));
        }
        ebpf
    })
    .join()
    .expect("attach the pass-through programs")
}

/// A handle on a namespace owned elsewhere (never deleted by this handle).
pub(crate) fn borrowed_ns(name: &str) -> std::mem::ManuallyDrop<Netns> {
    std::mem::ManuallyDrop::new(Netns {
        name: name.to_string(),
    })
}

/// A directory removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` in the network namespace `ns` with `nsenter --net` (not `ip netns exec`, which
/// remounts /sys).
pub(crate) fn nsenter(ns: &str, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    c
}

/// `etcdctl` (API v3, short timeouts) in namespace `ns` against `endpoints`.
pub fn etcdctl_in(ns: &str, endpoints: &str, args: &[&str]) -> Output {
    nsenter(ns, ETCDCTL_BIN)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=1s", "--command-timeout=2s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl")
}

/// stdout and stderr of a command, for messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One etcd member process.
pub struct Member {
    pub name: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    runs: u32,
}

/// The three etcd members, in the etcd namespace. Every running member is killed on drop.
pub struct Etcd {
    ns: String,
    token: String,
    pub members: Vec<Member>,
}

impl Etcd {
    pub(crate) fn new(ns: &Netns, dir: &Path) -> Etcd {
        let members = (1..=MEMBERS)
            .map(|i| Member {
                name: format!("m{i}"),
                data_dir: dir.join(format!("m{i}.etcd")),
                log: dir.join(format!("m{i}.log")),
                child: None,
                runs: 0,
            })
            .collect();
        Etcd {
            ns: ns.name.clone(),
            token: format!("ftn-lab-{}", unique_name("t")),
            members,
        }
    }

    fn spawn(&mut self, i: usize, state: &str) {
        check_member(i);
        let initial_cluster = (1..=MEMBERS)
            .map(|j| format!("m{j}={}", member_peer_url(j)))
            .collect::<Vec<_>>()
            .join(",");
        let (ns, token) = (self.ns.clone(), self.token.clone());
        let m = &mut self.members[i - 1];
        assert!(m.child.is_none(), "etcd member {i} is already running");
        m.runs += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        writeln!(&log, "==== etcd {} run #{} ({state}) ====", m.name, m.runs).unwrap();
        let (peer, client) = (member_peer_url(i), member_client_url(i));
        let mut cmd = nsenter(&ns, ETCD_BIN);
        // Settings come from the command line only.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", &token])
            .args(["--initial-cluster-state", state])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // `nsenter` execs etcd: the child's pid is etcd's.
        m.child = Some(cmd.spawn().expect("spawn etcd"));
    }

    /// Forms the cluster (`--initial-cluster-state new`) and waits until every member is
    /// healthy (30 s at most).
    pub(crate) fn start_new(&mut self) -> Duration {
        for i in 1..=MEMBERS {
            self.spawn(i, "new");
        }
        self.wait_healthy(&all_members(), ETCD_START)
    }

    pub fn is_running(&self, i: usize) -> bool {
        check_member(i);
        self.members[i - 1].child.is_some()
    }

    /// Running members, by number.
    pub fn running(&self) -> Vec<usize> {
        (1..=MEMBERS).filter(|&i| self.is_running(i)).collect()
    }

    /// SIGKILL to member i (by pid), then reaps it.
    pub fn kill_member(&mut self, i: usize) {
        check_member(i);
        let mut c = self.members[i - 1]
            .child
            .take()
            .unwrap_or_else(|| panic!("etcd member {i} is not running"));
        // SAFETY: plain syscall on a pid we spawned and have not reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        let _ = c.wait();
    }

    /// Restarts member i on its data directory (`--initial-cluster-state existing`). Does not
    /// wait: see [`Etcd::wait_healthy`].
    pub fn start_member(&mut self, i: usize) {
        self.spawn(i, "existing");
    }

    /// Stops every running member with SIGTERM (SIGKILL after 10 s): the followers first,
    /// then, 300 ms later, the raft leader. (A leader that gets SIGTERM while it still sees a
    /// follower connected first hands its leadership over to it; when that follower is
    /// stopping too, the leader waits for etcd's request timeout, 5 s + 2 election timeouts
    /// = 7 s with the defaults, before it exits. Stopped alone, it exits at once.) Returns
    /// how long the stop took.
    pub fn stop_all_members(&mut self) -> Duration {
        let t = Instant::now();
        let leader = self.leader_member();
        let (followers, last): (Vec<usize>, Vec<usize>) =
            self.running().into_iter().partition(|&i| Some(i) != leader);
        let mut took = Vec::new();
        for (n, group) in [followers, last].into_iter().enumerate() {
            if n == 1 {
                // Let the leader see its followers' connections close (see above).
                std::thread::sleep(Duration::from_millis(300));
            }
            let g = Instant::now();
            let mut children: Vec<Child> = group
                .iter()
                .filter_map(|&i| self.members[i - 1].child.take())
                .collect();
            for c in &children {
                // SAFETY: as in kill_member.
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            for c in &mut children {
                while c.try_wait().ok().flatten().is_none() {
                    if Instant::now() > deadline {
                        // SAFETY: as above.
                        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
                        let _ = c.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            took.push(format!("{group:?} in {} ms", g.elapsed().as_millis()));
        }
        eprintln!(
            "etcd: stopped the followers, then the leader (member {leader:?}): {}",
            took.join(", ")
        );
        t.elapsed()
    }

    /// Starts every stopped member on its data directory and waits until all are healthy
    /// (30 s at most); returns how long that took.
    pub fn start_all_members(&mut self) -> Duration {
        for i in 1..=MEMBERS {
            if !self.is_running(i) {
                self.spawn(i, "existing");
            }
        }
        self.wait_healthy(&all_members(), ETCD_START)
    }

    /// `etcdctl <args>` in the etcd namespace against every member.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl_in(&self.ns, &endpoints_of(&all_members()), args)
    }

    /// `etcdctl <args>` against these members only.
    pub fn etcdctl_on(&self, members: &[usize], args: &[&str]) -> Output {
        etcdctl_in(&self.ns, &endpoints_of(members), args)
    }

    /// `etcdctl <args>` must succeed; its stdout.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "`etcdctl {}` failed: {}",
            args.join(" "),
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits (at most `within`) until `etcdctl endpoint health` succeeds for every one of
    /// `members`; returns how long that took.
    pub fn wait_healthy(&self, members: &[usize], within: Duration) -> Duration {
        let t = Instant::now();
        loop {
            let out = self.etcdctl_on(members, &["endpoint", "health"]);
            if out.status.success() {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < within,
                "etcd members {members:?} not healthy within {within:?}: {}\n{}",
                output_text(&out),
                self.logs_tail(20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The member (by number) that is the raft leader, per the running members.
    pub fn leader_member(&self) -> Option<usize> {
        let out = self.etcdctl_on(&self.running(), &["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?.iter().find_map(|e| {
            let st = &e["Status"];
            let me = st["header"]["member_id"].as_u64()?;
            if me != st["leader"].as_u64()? {
                return None;
            }
            let ep = e["Endpoint"].as_str()?;
            (1..=MEMBERS).find(|&i| member_client_url(i) == ep)
        })
    }

    /// The last `n` lines of every member's log.
    pub fn logs_tail(&self, n: usize) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "---- etcd {} log ({}) ----\n{}\n",
                    m.name,
                    m.log.display(),
                    tail(&std::fs::read_to_string(&m.log).unwrap_or_default(), n)
                )
            })
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                // SAFETY: as in kill_member.
                unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs_tail(15));
        }
    }
}

/// The lab's check timing: every server checked every 100 ms (default timeout, rise, fall).
/// The configuration below is written from these constants, and every wait of the cluster lab
/// is derived from them plus [`MARGIN`].
pub const CHECKS: Timing = Timing::with_interval(Duration::from_millis(100));
/// `[directory] dial_timeout` of the lab.
pub const DIAL_TIMEOUT: Duration = Duration::from_millis(500);
/// `[directory] request_timeout` of the lab.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// `[directory] lease_ttl` of the lab (whole seconds, as the configuration requires).
pub const LEASE_TTL: Duration = Duration::from_secs(2);
const _: () = assert!(LEASE_TTL.subsec_nanos() == 0);
/// etcd's own start (members electing their leader): no ftn timing is involved; what etcd 3.4
/// takes on a loaded 2-core machine, with room.
pub const ETCD_START: Duration = Duration::from_secs(30);

/// The worst case of one etcd request through ftn's pool with these timeouts: every member
/// tried in turn, each with a dial and a request timeout.
pub fn etcd_request_worst_with(dial: Duration, request: Duration) -> Duration {
    (dial + request) * MEMBERS as u32
}

/// [`etcd_request_worst_with`] the lab's timeouts.
pub fn etcd_request_worst() -> Duration {
    etcd_request_worst_with(DIAL_TIMEOUT, REQUEST_TIMEOUT)
}

/// Until a leader is elected once the previous one is gone: its lease expires within
/// [`LEASE_TTL`], then a campaign (one request), plus the margin.
pub fn leader_wait() -> Duration {
    LEASE_TTL + etcd_request_worst() + MARGIN
}

/// Until every gateway applies a failover: the down verdict, each gateway's publish of it, the
/// leader's commit and every gateway's watch event (at worst one pool request each for the
/// publish, the commit and the watch), plus the margin.
pub fn failover_wait() -> Duration {
    CHECKS.down() + etcd_request_worst() * 3
}

/// Until every gateway applies an immediate failback: the up verdict, publish, commit, watch.
pub fn failback_wait() -> Duration {
    CHECKS.up() + etcd_request_worst() * 3
}

/// Until a gateway cut from etcd says so: its lease is renewed every ttl/4 and counts as lost
/// after a whole ttl without renewal (plus the request that was in flight).
pub fn etcd_lost_wait() -> Duration {
    LEASE_TTL + LEASE_TTL / 4 + REQUEST_TIMEOUT + MARGIN
}

/// Until a gateway whose etcd came back is connected again: a failing call still in flight
/// when etcd returns, the session's 200 ms retry, then revoke of the old lease, grant of a new
/// one, its record, the directory read and the watch (one pool request each at worst), plus the
/// margin.
pub fn etcd_back_wait() -> Duration {
    Duration::from_millis(200) + etcd_request_worst() * 6 + MARGIN
}

/// The configuration of gateway k: identical `[[server]]` and `[[resource]]` declarations on
/// every gateway; `resource_extra` lines are added to resource `web`.
pub fn gateway_config(
    k: usize,
    pin_dir: &Path,
    token_file: &Path,
    prefix: &str,
    resource_extra: &str,
) -> String {
    let endpoints = (1..=MEMBERS)
        .map(|i| format!("\"{}\"", member_client_url(i)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"# written by the ftn cluster lab: gateway {k} of {GATEWAYS}
[gateway]
name = "{name}"
interfaces = ["gc", "gp", "gb"]
pin_dir = "{pin}"

[api]
listen = "{API_LISTEN}"
token_file = "{token}"

[directory]
backend = "etcd"
endpoints = [{endpoints}]
prefix = "{prefix}"
dial_timeout = "{dial}ms"
request_timeout = "{request}ms"
lease_ttl = "{lease}s"

[[server]]
name = "primary"
address = "{PRIMARY_ADDR}"
checks = [{{ type = "tcp", port = 80{checks} }}]

[[server]]
name = "backup"
address = "{BACKUP_ADDR}"
checks = [{{ type = "tcp", port = 80{checks} }}]

[[resource]]
name = "web"
vip = "{VIP}"
protocol = "tcp"
ports = [80]
servers = ["primary", "backup"]
{resource_extra}
"#,
        name = gw_name(k),
        pin = pin_dir.display(),
        token = token_file.display(),
        dial = DIAL_TIMEOUT.as_millis(),
        request = REQUEST_TIMEOUT.as_millis(),
        lease = LEASE_TTL.as_secs(),
        checks = CHECKS.check_options(),
    )
}

/// The whole lab. Fields are dropped in declaration order: controllers first, namespaces and
/// the temporary directory last.
pub struct Cluster {
    /// Gateway k's controller is `gws[k - 1]`.
    pub gws: Vec<Ftn>,
    /// primary, backup.
    services: [Option<Service>; 2],
    _pass: aya::Ebpf,
    pub etcd: Etcd,
    /// The directory's key prefix (`/ftn-lab-<unique>`).
    pub prefix: String,
    pub client: Netns,
    pub primary: Netns,
    pub backup: Netns,
    pub etcd_ns: Netns,
    /// Gateway k's namespace is `gw_ns[k - 1]`.
    pub gw_ns: Vec<Netns>,
    dir: TempDir,
}

impl Cluster {
    /// The topology, the etcd cluster (formed and healthy), the services and the gateways'
    /// configurations (`resource_extra` added to resource `web`); no controller runs yet.
    pub fn new(resource_extra: &str) -> Cluster {
        require_root();
        let t = Instant::now();
        let dir = TempDir(std::env::temp_dir().join(format!("ftn-cluster-{}", unique_name("d"))));
        std::fs::create_dir_all(&dir.0).unwrap();
        let client = Netns::new("ftcc");
        let primary = Netns::new("ftcp");
        let backup = Netns::new("ftcb");
        let etcd_ns = Netns::new("ftce");
        let gw_ns: Vec<Netns> = (1..=GATEWAYS).map(|_| Netns::new("ftcg")).collect();

        // etcd: the three member addresses on the loopback interface (this kernel may have no
        // dummy interfaces).
        etcd_ns.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        for i in 1..=MEMBERS {
            etcd_ns.ip(&["addr", "add", &format!("{}/32", member_ip(i)), "dev", "lo"]);
        }
        // Servers: one service address each, on the loopback interface.
        for (ns, addr) in [(&primary, PRIMARY_ADDR), (&backup, BACKUP_ADDR)] {
            ns.ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"]);
        }
        for (i, g) in gw_ns.iter().enumerate() {
            let k = i + 1;
            g.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
            g.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
            // (a) client link
            let (cdev, pdev, bdev, edev) = (
                format!("c{k}"),
                format!("p{k}"),
                format!("b{k}"),
                format!("e{k}"),
            );
            veth(&client, &cdev, g, "gc");
            client.ip(&["addr", "add", &format!("198.18.1{k}.10/24"), "dev", &cdev]);
            g.ip(&["addr", "add", &format!("{}/24", client_gw(k)), "dev", "gc"]);
            // (b), (c) server links
            for (which, srv, sdev) in [("primary", &primary, &pdev), ("backup", &backup, &bdev)] {
                let gdev = server_dev(which);
                let net = server_net(which, k);
                veth(srv, sdev, g, gdev);
                srv.ip(&["addr", "add", &format!("198.18.{net}.10/24"), "dev", sdev]);
                g.ip(&["addr", "add", &format!("198.18.{net}.1/24"), "dev", gdev]);
                g.ip(&[
                    "route",
                    "add",
                    &format!("{}/32", server_addr(which)),
                    "via",
                    &format!("198.18.{net}.10"),
                    "dev",
                    gdev,
                ]);
                // Replies to the client address of link k go back through gateway k.
                srv.ip(&[
                    "route",
                    "add",
                    &format!("{}/32", client_addr(k)),
                    "via",
                    &format!("198.18.{net}.1"),
                    "dev",
                    sdev,
                ]);
            }
            // (d) etcd link
            veth(&etcd_ns, &edev, g, "ge");
            etcd_ns.ip(&["addr", "add", &format!("198.18.21{k}.1/24"), "dev", &edev]);
            g.ip(&["addr", "add", &format!("198.18.21{k}.2/24"), "dev", "ge"]);
            g.ip(&[
                "route",
                "add",
                "198.18.200.0/24",
                "via",
                &format!("198.18.21{k}.1"),
                "dev",
                "ge",
            ]);
            // The VIP through gateway k from the client address of link k.
            let table = format!("10{k}");
            client.ip(&[
                "rule",
                "add",
                "from",
                &client_addr(k).to_string(),
                "table",
                &table,
                "priority",
                &format!("10{k}"),
            ]);
            client.ip(&[
                "route",
                "add",
                &format!("{VIP}/32"),
                "via",
                &client_gw(k),
                "dev",
                &cdev,
                "table",
                &table,
            ]);
            // Hosts compute their checksums in software (XDP cannot see CHECKSUM_PARTIAL).
            client.exec(&["ethtool", "-K", &cdev, "tx", "off"]);
            primary.exec(&["ethtool", "-K", &pdev, "tx", "off"]);
            backup.exec(&["ethtool", "-K", &bdev, "tx", "off"]);
            // Replies SNATed by XDP but passed to the kernel come from the VIP on a server
            // link: no reverse-path filter anywhere in the gateway.
            g.exec(&[
                "sh",
                "-c",
                "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done",
            ]);
        }
        // Any other source: the VIP through gateway 1.
        client.ip(&["route", "add", &format!("{VIP}/32"), "via", &client_gw(1)]);
        for ns in [&client, &primary, &backup, &etcd_ns] {
            no_rp_filter(ns);
        }

        // A frame redirected into a veth is delivered only when its peer runs XDP: the
        // pass-through program on every host-side veth (one object, nine links).
        let pass = {
            let targets: Vec<(String, String)> = (1..=GATEWAYS)
                .flat_map(|k| {
                    [
                        (client.name.clone(), format!("c{k}")),
                        (primary.name.clone(), format!("p{k}")),
                        (backup.name.clone(), format!("b{k}")),
                    ]
                })
                .collect();
            attach_pass_programs(targets)
        };

        let services = [
            Some(Service::start(&primary, "primary")),
            Some(Service::start(&backup, "backup")),
        ];

        let mut etcd = Etcd::new(&etcd_ns, &dir.0);
        let formed = etcd.start_new();

        let prefix = format!("/ftn-lab-{}", unique_name("k"));
        let gws: Vec<Ftn> = gw_ns.iter().map(Ftn::new).collect();
        for (i, f) in gws.iter().enumerate() {
            f.write_config(&gateway_config(
                i + 1,
                &f.pin_dir,
                &f.token_file(),
                &prefix,
                resource_extra,
            ));
        }
        eprintln!(
            "cluster lab: topology and etcd cluster up in {:.1} s (etcd healthy {:.1} s after \
             its members started), prefix {prefix}",
            t.elapsed().as_secs_f64(),
            formed.as_secs_f64()
        );
        Cluster {
            gws,
            services,
            _pass: pass,
            etcd,
            prefix,
            client,
            primary,
            backup,
            etcd_ns,
            gw_ns,
            dir,
        }
    }

    /// [`Cluster::new`], then `ftn run` on the three gateways; waits for a leader, for `web`
    /// on the primary on every gateway, and for the primary to answer through each gateway.
    pub fn start(resource_extra: &str) -> Cluster {
        let mut c = Cluster::new(resource_extra);
        c.start_gateways();
        c
    }

    /// `ftn run` on the three gateways; waits for a leader, for `web` on the primary on every
    /// gateway, and for the primary to answer through each gateway.
    pub fn start_gateways(&mut self) {
        let c = self;
        let t = Instant::now();
        for k in 1..=GATEWAYS {
            c.start_gateway(k);
        }
        // A gateway's session: connect, lease, record, campaign (one request each at worst),
        // after the controller's own start.
        let (leader, _) = c.wait_leader(START + leader_wait());
        // The leader's first plan reaches every gateway's maps: one commit and one watch event.
        c.wait_all_current("web", Some("primary"), etcd_request_worst() * 2 + MARGIN);
        for k in 1..=GATEWAYS {
            assert_eq!(
                // The first connection may race the gateway's neighbour resolution.
                c.ask_via_retry(k, MARGIN).as_deref(),
                Ok("primary"),
                "a new connection through gateway {k} must reach the primary"
            );
        }
        eprintln!(
            "cluster lab: 3 gateways up in {:.1} s, leader {leader}",
            t.elapsed().as_secs_f64()
        );
    }

    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    pub fn gw_ns(&self, k: usize) -> &Netns {
        check_gw(k);
        &self.gw_ns[k - 1]
    }

    pub fn gw(&self, k: usize) -> &Ftn {
        check_gw(k);
        &self.gws[k - 1]
    }

    /// Gateway number of a gateway name (`gw2` -> 2).
    pub fn index_of(&self, name: &str) -> usize {
        (1..=GATEWAYS)
            .find(|&k| gw_name(k) == name)
            .unwrap_or_else(|| panic!("no gateway named {name:?}"))
    }

    /// Gateways whose controller this harness runs.
    pub fn running(&self) -> Vec<usize> {
        (1..=GATEWAYS)
            .filter(|&k| self.gws[k - 1].is_running())
            .collect()
    }

    /// `ftn run` on gateway k (waits until its API answers, 10 s at most).
    pub fn start_gateway(&mut self, k: usize) {
        check_gw(k);
        self.gws[k - 1].start();
    }

    /// SIGKILL to gateway k's controller; its pinned dataplane keeps forwarding.
    pub fn kill_gateway(&mut self, k: usize) {
        check_gw(k);
        self.gws[k - 1].kill9();
    }

    /// `ftn check-config` of gateway k's configuration: Ok(stdout) or Err(stderr).
    pub fn check_config(&self, k: usize) -> Result<String, String> {
        let f = self.gw(k);
        let out = f.cli_raw(&["check-config", f.config.to_str().unwrap()]);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(output_text(&out))
        }
    }

    pub fn status(&self, k: usize) -> Result<serde_json::Value, String> {
        self.gw(k).try_status()
    }

    /// Gateway k's `cluster` object of its status.
    pub fn cluster_status(&self, k: usize) -> Result<serde_json::Value, String> {
        self.status(k).map(|s| s["cluster"].clone())
    }

    /// Current server of `resource` per gateway k (Ok(None): no server).
    pub fn current_of(&self, k: usize, resource: &str) -> Result<Option<String>, String> {
        let st = self.status(k)?;
        let r = st["resources"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["name"] == resource))
            .ok_or_else(|| format!("no resource {resource} in gateway {k}'s status: {st}"))?;
        Ok(r["current"].as_str().map(String::from))
    }

    /// Every running gateway's view, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for k in 1..=GATEWAYS {
            if !self.gws[k - 1].is_running() {
                s.push_str(&format!("  gw{k}: not running\n"));
                continue;
            }
            match self.status(k) {
                Ok(st) => s.push_str(&format!(
                    "  gw{k}: resources {} cluster {}\n",
                    st["resources"], st["cluster"]
                )),
                Err(e) => s.push_str(&format!("  gw{k}: {e}\n")),
            }
        }
        s
    }

    /// The leader gateway's name, asking running gateways (those that report a working etcd
    /// session first).
    pub fn leader(&self) -> Option<String> {
        let mut fallback = None;
        for k in self.running() {
            let Ok(cl) = self.cluster_status(k) else {
                continue;
            };
            if let Some(l) = cl["leader"].as_str() {
                if cl["etcd"] == "connected" {
                    return Some(l.to_string());
                }
                fallback.get_or_insert_with(|| l.to_string());
            }
        }
        fallback
    }

    /// Waits (at most `within`) until the gateways name a leader that is running and says
    /// itself that it is the leader; returns (its name, how long that took).
    pub fn wait_leader(&self, within: Duration) -> (String, Duration) {
        let t = Instant::now();
        loop {
            if let Some(l) = self.leader() {
                let k = self.index_of(&l);
                let agrees = self.gws[k - 1].is_running()
                    && self
                        .cluster_status(k)
                        .is_ok_and(|cl| cl["role"] == "leader");
                if agrees {
                    return (l, t.elapsed());
                }
            }
            assert!(
                t.elapsed() < within,
                "no running gateway became leader within {within:?}:\n{}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (at most `within`) until every gateway of `gws` reports `server` as the current
    /// server of `resource`; returns how long that took.
    pub fn wait_current_on(
        &self,
        gws: &[usize],
        resource: &str,
        server: Option<&str>,
        within: Duration,
    ) -> Duration {
        let t = Instant::now();
        loop {
            let all = gws.iter().all(|&k| {
                self.current_of(k, resource)
                    .is_ok_and(|c| c.as_deref() == server)
            });
            if all {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < within,
                "{resource} did not reach {server:?} on gateways {gws:?} within {within:?}:\n{}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Cluster::wait_current_on`] every running gateway.
    pub fn wait_all_current(
        &self,
        resource: &str,
        server: Option<&str>,
        within: Duration,
    ) -> Duration {
        let running = self.running();
        assert!(!running.is_empty(), "no gateway is running");
        self.wait_current_on(&running, resource, server, within)
    }

    /// Waits (at most `within`) until gateway k's status says `"etcd": state`.
    pub fn wait_etcd_state(&self, k: usize, state: &str, within: Duration) -> Duration {
        let t = Instant::now();
        loop {
            if self.cluster_status(k).is_ok_and(|cl| cl["etcd"] == state) {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < within,
                "gateway {k} did not report etcd {state:?} within {within:?}:\n{}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What gateway `viewer` shows (in `cluster.gateways`) of gateway `of`'s observation of
    /// `server` ("up", "down", ...).
    pub fn observation(&self, viewer: usize, of: usize, server: &str) -> Option<String> {
        let cl = self.cluster_status(viewer).ok()?;
        let g = cl["gateways"]
            .as_array()?
            .iter()
            .find(|g| g["name"] == gw_name(of).as_str())?;
        g["observations"][server].as_str().map(String::from)
    }

    /// Waits (at most `within`) until [`Cluster::observation`] is `state`.
    pub fn wait_observation(
        &self,
        viewer: usize,
        of: usize,
        server: &str,
        state: &str,
        within: Duration,
    ) -> Duration {
        let t = Instant::now();
        loop {
            if self.observation(viewer, of, server).as_deref() == Some(state) {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < within,
                "gateway {viewer} did not show gw{of}'s observation of {server} as {state:?} \
                 within {within:?}:\n{}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Gateway k's event log (`ftn events --json`), one JSON object per event, or why it
    /// could not be read.
    pub fn try_events(&self, k: usize) -> Result<Vec<serde_json::Value>, String> {
        self.try_events_after(k, 0)
    }

    /// The first 1,000 events of gateway k's log after sequence number `after`, oldest first.
    pub fn try_events_after(&self, k: usize, after: u64) -> Result<Vec<serde_json::Value>, String> {
        let after = after.to_string();
        let out = self
            .gw(k)
            .cli(&["events", "--json", "--limit", "1000", "--after", &after]);
        if !out.status.success() {
            return Err(format!(
                "`ftn events` on gw{k} failed: {}",
                output_text(&out)
            ));
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| format!("event {l:?}: {e}")))
            .collect()
    }

    /// The sequence number of the last event in gateway k's log (0 if none), read in pages.
    pub fn last_event_seq(&self, k: usize) -> Result<u64, String> {
        let mut after = 0;
        // Bounded: 1,000 pages of 1,000 events, ten times the largest lab's log.
        for _ in 0..1_000 {
            let page = self.try_events_after(k, after)?;
            match page.last().and_then(|e| e["seq"].as_u64()) {
                Some(seq) if seq > after => after = seq,
                _ => return Ok(after),
            }
        }
        Err(format!("gw{k}: more than 1,000,000 events in its log"))
    }

    /// [`Cluster::try_events`], panicking on failure.
    pub fn events(&self, k: usize) -> Vec<serde_json::Value> {
        self.try_events(k).unwrap_or_else(|e| panic!("{e}"))
    }

    /// How many `failover` events of `resource` gateway k's event log holds.
    pub fn failover_events(&self, k: usize, resource: &str) -> usize {
        count_events(&self.events(k), "failover", resource)
    }

    /// One new connection to the VIP from the client through gateway k (from its client
    /// address on link k): the name of the server that answered.
    pub fn ask_via(&self, k: usize) -> Result<String, String> {
        self.ask_addr_via(k, VIP.parse().unwrap(), Duration::from_secs(1))
    }

    /// [`Cluster::ask_via`] until it succeeds or `within` has passed (the first connection
    /// through a gateway may race neighbour resolution).
    pub fn ask_via_retry(&self, k: usize, within: Duration) -> Result<String, String> {
        let t = Instant::now();
        loop {
            let r = self.ask_via(k);
            if r.is_ok() || t.elapsed() >= within {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One new TCP connection to `dst`:80 from the client address of link k.
    pub fn ask_addr_via(&self, k: usize, dst: IpAddr, timeout: Duration) -> Result<String, String> {
        let src = client_addr(k);
        try_in_ns(&self.client, move || {
            Conn::try_open_from(Some(src), dst, timeout)
                .map_err(|e| e.to_string())
                .and_then(|mut c| c.try_ask())
        })
        .unwrap_or_else(|_| Err("probe thread panicked".into()))
    }

    /// A client prober through gateway k: a new connection to the VIP every `every`.
    pub fn probe_via(&self, k: usize, every: Duration, max: Duration) -> Prober {
        Prober::start_from(
            &self.client,
            Some(client_addr(k)),
            VIP.parse().unwrap(),
            every,
            max,
        )
    }

    /// One prober per gateway (`[gw1, gw2, gw3]`).
    pub fn probe_all(&self, every: Duration, max: Duration) -> Vec<Prober> {
        (1..=GATEWAYS)
            .map(|k| self.probe_via(k, every, max))
            .collect()
    }

    fn service_slot(which: &str) -> usize {
        match which {
            "primary" => 0,
            "backup" => 1,
            _ => panic!("no server {which:?} in the cluster lab (primary or backup)"),
        }
    }

    /// Stops a server's service (port 80 closed; host and links up).
    pub fn kill_service(&mut self, which: &str) {
        let slot = &mut self.services[Cluster::service_slot(which)];
        assert!(slot.is_some(), "the {which} service is not running");
        *slot = None;
    }

    pub fn start_service(&mut self, which: &str) {
        let i = Cluster::service_slot(which);
        assert!(self.services[i].is_none(), "the {which} service is running");
        let ns = if i == 0 { &self.primary } else { &self.backup };
        let name = if i == 0 { "primary" } else { "backup" };
        self.services[i] = Some(Service::start(ns, name));
    }

    /// Cuts gateway k off from every etcd member: an nft table in gateway k's namespace drops
    /// every packet to and from 198.18.200.0/24 (silently, like a partition: connections time
    /// out rather than fail at once). Links and routes stay as they are.
    pub fn cut_etcd(&self, k: usize) {
        let script = self.dir().join(format!("cut-etcd-{k}.nft"));
        std::fs::write(
            &script,
            format!(
                "table inet {CUT_TABLE} {{\n\
                 \tchain input {{\n\
                 \t\ttype filter hook input priority 0; policy accept;\n\
                 \t\tip saddr 198.18.200.0/24 drop\n\
                 \t}}\n\
                 \tchain output {{\n\
                 \t\ttype filter hook output priority 0; policy accept;\n\
                 \t\tip daddr 198.18.200.0/24 drop\n\
                 \t}}\n\
                 }}\n"
            ),
        )
        .unwrap();
        self.gw_ns(k).exec(&["nft", "-f", script.to_str().unwrap()]);
    }

    /// Undoes [`Cluster::cut_etcd`].
    pub fn heal_etcd(&self, k: usize) {
        self.gw_ns(k)
            .exec(&["nft", "delete", "table", "inet", CUT_TABLE]);
    }

    /// Sets gateway k's link to `which` ("primary" or "backup") down, in gateway k's
    /// namespace: gateway k can no longer reach that server (the others still can).
    pub fn cut_server(&self, k: usize, which: &str) {
        self.gw_ns(k)
            .ip(&["link", "set", server_dev(which), "down"]);
    }

    /// Undoes [`Cluster::cut_server`]: the link up again and the routes it took away put
    /// back (bounded retries while the link comes up).
    pub fn heal_server(&self, k: usize, which: &str) {
        let net = server_net(which, k);
        let dev = server_dev(which);
        let g = self.gw_ns(k);
        g.ip(&["link", "set", dev, "up"]);
        let srv = if which == "primary" {
            &self.primary
        } else {
            &self.backup
        };
        let sdev = format!("{}{k}", &which[..1]);
        let routes: [(&Netns, String, String, String); 2] = [
            (
                g,
                format!("{}/32", server_addr(which)),
                format!("198.18.{net}.10"),
                dev.to_string(),
            ),
            (
                srv,
                format!("{}/32", client_addr(k)),
                format!("198.18.{net}.1"),
                sdev,
            ),
        ];
        for (ns, to, via, dev) in routes {
            let t = Instant::now();
            while !run_quiet(&[
                "ip", "-n", &ns.name, "route", "replace", &to, "via", &via, "dev", &dev,
            ]) {
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "cannot restore the route {to} via {via} in {}",
                    ns.name
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `etcdctl <args>` from gateway k's namespace, against every member (what gateway k's
    /// controller can reach).
    pub fn etcdctl_from_gateway(&self, k: usize, args: &[&str]) -> Output {
        etcdctl_in(&self.gw_ns(k).name, &endpoints_of(&all_members()), args)
    }

    /// Runs `f` inside the client namespace.
    pub fn in_client<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_ns(&self.client, f)
    }
}

/// Events of `kind` about `resource` in a list of `ftn events --json` objects (by the event's
/// `resource` field, or, for an event without it, a message starting with "<resource> moved").
pub fn count_events(events: &[serde_json::Value], kind: &str, resource: &str) -> usize {
    let moved = format!("{resource} moved ");
    events
        .iter()
        .filter(|e| e["kind"] == kind)
        .filter(|e| {
            e["resource"] == resource
                || (e["resource"].is_null()
                    && e["message"].as_str().is_some_and(|m| m.starts_with(&moved)))
        })
        .count()
}

/// rp_filter 0 on every interface of a host namespace.
pub(crate) fn no_rp_filter(ns: &Netns) {
    ns.exec(&[
        "sh",
        "-c",
        "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done",
    ]);
}
