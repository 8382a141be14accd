//! The gateway high-availability lab: an upstream router running BIRD 2 with ECMP and BFD to
//! three ftn gateways, each with its own BIRD 2 that exports the VIP routes ftn keeps in its
//! announce table; the gateways share one directory on a three-member etcd cluster.
//!
//! ```text
//! client ns            router ns                         gateway k ns (k = 1, 2, 3)
//! c0 198.18.20.10 ---- r0 198.18.20.1
//!                      brk 198.18.3k.1 [rk, hka] ------- gu 198.18.3k.2     (BGP + BFD)
//!                                                         gp 198.18.(60+k).1 --- pk .10 primary ns
//!                                                         gb 198.18.(70+k).1 --- bk .10 backup ns
//!                                                         ge 198.18.21k.2 ------ etcd ns
//! ```
//!
//! - The router's side of each gateway link is a bridge `brk` (the "switch port") with the
//!   veth `rk` to the gateway and one end of a veth pair kept up inside the router (`hka`/`hkb`):
//!   a gateway whose links go down does not take the router's link down with it (as a host
//!   behind a switch would not), so only BFD tells the router that the gateway died.
//! - The router's BIRD learns the VIP from each gateway over eBGP (AS 65000 <-> 65001) with BFD
//!   ([`BFD_INTERVAL`] x [`BFD_MULTIPLIER`]) and installs one ECMP route (`merge paths`); the
//!   kernel hashes flows by their 5-tuple (`fib_multipath_hash_policy = 1`).
//! - Each gateway's BIRD imports ftn's announce table ([`ANNOUNCE_TABLE`], `learn`) and exports
//!   only those routes to the router.
//! - The servers route the clients' network back through all three gateways (ECMP, 5-tuple
//!   hash), so a reply may come back through another gateway than its request (the stateless
//!   return path translates it there). The server side detects a dead gateway by its link
//!   (`ignore_routes_with_linkdown`): the servers here sit directly on the gateways' links.
//!
//! Everything is removed on drop, also when a test panics: controllers (killed, dataplanes
//! detached), BIRD and etcd (killed by pid), services, the namespaces and the temporary
//! directory.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{
    attach_pass_programs, gateway_config, no_rp_filter, nsenter, output_text, Etcd, TempDir,
    BACKUP_ADDR, GATEWAYS, MEMBERS, PRIMARY_ADDR, VIP,
};
use crate::ftn::{Ftn, Prober, Sample};
use crate::lab::{veth, Conn, Service};
use crate::timing::MARGIN;
use crate::{require_root, unique_name, Netns};

/// ftn's announce table on every gateway.
pub const ANNOUNCE_TABLE: u32 = 100;
/// BFD's transmit and receive interval on both sides of every gateway link.
pub const BFD_INTERVAL: Duration = Duration::from_millis(50);
pub const BFD_MULTIPLIER: u32 = 3;
/// `[announce] etcd_grace` in the lab.
pub const ETCD_GRACE: Duration = Duration::from_secs(3);
/// `[announce] withdraw_wait` in the lab.
pub const WITHDRAW_WAIT: Duration = Duration::from_secs(1);
/// The client's address, and its network (the gateways' return route).
pub const CLIENT_ADDR: &str = "198.18.20.10";
pub const CLIENT_NET: &str = "198.18.20.0/24";
pub const BIRD_BIN: &str = "/usr/sbin/bird";
/// BGP sessions up and the VIP's route on the router with every gateway: BIRD's start, its
/// connect retry (1 s) and the first updates; generous, as it is set-up, not a measurement.
pub const SESSIONS_UP: Duration = Duration::from_secs(30);

/// How long BFD takes to call a silent neighbour down.
pub fn bfd_detect() -> Duration {
    BFD_INTERVAL * BFD_MULTIPLIER
}

/// Gateway k's address on its upstream link.
pub fn gw_upstream(k: usize) -> String {
    format!("198.18.3{k}.2")
}

fn router_side(k: usize) -> String {
    format!("198.18.3{k}.1")
}

/// A BIRD daemon in a namespace, killed (by pid) on drop.
struct Bird {
    child: Option<Child>,
    log: PathBuf,
}

impl Bird {
    fn start(ns: &str, dir: &Path, name: &str, config: &str) -> Bird {
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(&conf, config).unwrap();
        // Parse only (`-p`): a configuration error fails here, with BIRD's message.
        let parse = std::process::Command::new(BIRD_BIN)
            .arg("-p")
            .arg("-c")
            .arg(&conf)
            .output()
            .unwrap_or_else(|e| panic!("run {BIRD_BIN} (Debian bird2): {e}"));
        assert!(
            parse.status.success(),
            "BIRD refuses {}: {}",
            conf.display(),
            output_text(&parse)
        );
        let log = dir.join(format!("{name}.log"));
        let mut cmd = nsenter(ns, BIRD_BIN);
        cmd.arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(dir.join(format!("{name}.ctl")));
        let child = spawn_logged(cmd, &log, "BIRD (Debian bird2)");
        Bird {
            child: Some(child),
            log,
        }
    }

    /// Panics with the daemon's log when it exited (a configuration error, say).
    fn check_alive(&mut self) {
        if let Some(st) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            self.child = None;
            panic!(
                "BIRD exited ({st}); {}:\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    fn kill(&mut self) {
        kill_child(&mut self.child);
    }
}

/// Spawns `cmd` (a daemon in the foreground) with stdout and stderr appended to `log`.
pub(crate) fn spawn_logged(mut cmd: std::process::Command, log: &Path, what: &str) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"))
}

/// SIGKILL (by pid) to a child this lab spawned, then reaps it.
pub(crate) fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        // SAFETY: plain syscall on a pid we spawned and have not reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        let _ = c.wait();
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!(
                "---- {} ----\n{}",
                self.log.display(),
                crate::ftn::tail(&text, 30)
            );
        }
    }
}

fn bird_timers() -> String {
    "hold time 6; keepalive time 2; connect retry time 1; error wait time 1, 5;".into()
}

fn bfd_block(pattern: &str) -> String {
    format!(
        "protocol bfd {{\n  interface \"{pattern}\" {{ min rx interval {i} ms; min tx interval {i} ms; multiplier {BFD_MULTIPLIER}; }};\n}}\n",
        i = BFD_INTERVAL.as_millis()
    )
}

/// The router: ECMP of the BGP routes into its kernel table.
fn router_bird() -> String {
    let mut s = format!(
        "log stderr all;\nrouter id 198.18.20.1;\nprotocol device {{ }}\n\
         protocol kernel {{\n  ipv4 {{ import none; export all; }};\n  merge paths on;\n}}\n{}\
         template bgp gwpeer {{\n  local as 65000;\n  bfd on;\n  {}\n  ipv4 {{ import all; export none; }};\n}}\n",
        bfd_block("br*"),
        bird_timers()
    );
    for k in 1..=GATEWAYS {
        s.push_str(&format!(
            "protocol bgp gw{k} from gwpeer {{ neighbor {} as 65001; }}\n",
            gw_upstream(k)
        ));
    }
    s
}

/// Gateway k: ftn's announce table in, to the router only.
pub fn gateway_bird(k: usize) -> String {
    let mut s = format!(
        "log stderr all;\nrouter id {me};\nprotocol device {{ }}\n\
         protocol kernel ftn {{\n  ipv4 {{ import all; export none; }};\n  kernel table {ANNOUNCE_TABLE};\n  learn;\n  scan time 10;\n}}\n{bfd}\
         protocol bgp upstream {{\n  local {me} as 65001;\n  neighbor {peer} as 65000;\n  bfd on;\n  {timers}\n  ipv4 {{ import none; export where proto = \"ftn\" && net.len = 32; next hop self; }};\n}}\n",
        me = gw_upstream(k),
        peer = router_side(k),
        bfd = bfd_block("g*"),
        timers = bird_timers(),
    );
    for (name, net) in [("to_primary", 60 + k), ("to_backup", 70 + k)] {
        s.push_str(&format!(
            "protocol bgp {name} {{\n  local 198.18.{net}.1 as 65001;\n  neighbor 198.18.{net}.10 as 65100;\n  bfd on;\n  {}\n  ipv4 {{ import none; export where proto = \"ftn\" && net.len < 32; next hop self; }};\n}}\n",
            bird_timers()
        ));
    }
    s
}

/// A server: the return routes of every gateway that serves, as one ECMP route.
fn server_bird(which: &str) -> String {
    let (id, base, dev) = match which {
        "primary" => (PRIMARY_ADDR, 60, "p"),
        _ => (BACKUP_ADDR, 70, "b"),
    };
    let mut s = format!(
        "log stderr all;\nrouter id {id};\nprotocol device {{ }}\n\
         protocol kernel {{\n  ipv4 {{ import none; export all; }};\n  merge paths on;\n}}\n{}",
        bfd_block(&format!("{dev}*"))
    );
    for k in 1..=GATEWAYS {
        let net = base + k;
        s.push_str(&format!(
            "protocol bgp gw{k} {{\n  local 198.18.{net}.10 as 65100;\n  neighbor 198.18.{net}.1 as 65001;\n  bfd on;\n  {}\n  ipv4 {{ import all; export none; }};\n}}\n",
            bird_timers()
        ));
    }
    s
}

/// Gateway k's ftn configuration: the cluster lab's, on the upstream link, with `[announce]`.
pub fn ha_gateway_config(k: usize, f: &Ftn, prefix: &str) -> String {
    let base = gateway_config(k, &f.pin_dir, &f.token_file(), prefix, "");
    let base = base.replace(
        "interfaces = [\"gc\", \"gp\", \"gb\"]",
        "interfaces = [\"gu\", \"gp\", \"gb\"]",
    );
    assert!(
        base.contains("\"gu\""),
        "the cluster lab's interfaces changed"
    );
    format!(
        "{base}\n[announce]\nmechanism = \"kernel-table\"\ntable = {ANNOUNCE_TABLE}\netcd_grace = \"{}s\"\nwithdraw_wait = \"{}s\"\nreturn_routes = [\"{CLIENT_NET}\"]\n",
        ETCD_GRACE.as_secs(),
        WITHDRAW_WAIT.as_secs()
    )
}

/// The whole lab. Fields drop in declaration order: controllers and daemons first.
pub struct Ha {
    pub gws: Vec<Ftn>,
    birds: Vec<Bird>,
    _router_bird: Bird,
    /// primary's, backup's.
    server_birds: Vec<Bird>,
    services: [Option<Service>; 2],
    _pass: aya::Ebpf,
    pub etcd: Etcd,
    pub prefix: String,
    pub client: Netns,
    pub router: Netns,
    pub primary: Netns,
    pub backup: Netns,
    pub etcd_ns: Netns,
    pub gw_ns: Vec<Netns>,
    dir: TempDir,
}

impl Ha {
    /// The topology, etcd, the services, BIRD everywhere and ftn on every gateway; returns
    /// once the router has an ECMP route to the VIP through all three gateways and the
    /// client is served.
    pub fn start() -> Ha {
        require_root();
        let t = Instant::now();
        let dir = TempDir(std::env::temp_dir().join(format!("ftn-ha-{}", unique_name("d"))));
        std::fs::create_dir_all(&dir.0).unwrap();
        let client = Netns::new("fthc");
        let router = Netns::new("fthr");
        let primary = Netns::new("fthp");
        let backup = Netns::new("fthb");
        let etcd_ns = Netns::new("fthe");
        let gw_ns: Vec<Netns> = (1..=GATEWAYS).map(|_| Netns::new("fthg")).collect();

        veth(&client, "c0", &router, "r0");
        client.ip(&["addr", "add", &format!("{CLIENT_ADDR}/24"), "dev", "c0"]);
        client.ip(&["route", "add", "default", "via", "198.18.20.1"]);
        router.ip(&["addr", "add", "198.18.20.1/24", "dev", "r0"]);
        for ns in [&router, &primary, &backup] {
            ns.exec(&["sysctl", "-q", "-w", "net.ipv4.fib_multipath_hash_policy=1"]);
        }
        router.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        etcd_ns.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        for i in 1..=MEMBERS {
            etcd_ns.ip(&["addr", "add", &format!("198.18.200.{i}/32"), "dev", "lo"]);
        }
        for (ns, addr) in [(&primary, PRIMARY_ADDR), (&backup, BACKUP_ADDR)] {
            ns.ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"]);
            ns.exec(&[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.conf.all.ignore_routes_with_linkdown=1",
            ]);
        }
        for (i, g) in gw_ns.iter().enumerate() {
            let k = i + 1;
            g.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
            // The router's "switch port" for gateway k.
            let (br, rk, hka, hkb) = (
                format!("br{k}"),
                format!("r{k}"),
                format!("h{k}a"),
                format!("h{k}b"),
            );
            veth(&router, &rk, g, "gu");
            router.ip(&["link", "add", &br, "type", "bridge"]);
            router.ip(&["link", "add", &hka, "type", "veth", "peer", "name", &hkb]);
            for dev in [&rk, &hka] {
                router.ip(&["link", "set", dev, "master", &br]);
            }
            for dev in [&br, &hka, &hkb, &rk] {
                router.ip(&["link", "set", dev, "up"]);
            }
            router.ip(&["addr", "add", &format!("{}/24", router_side(k)), "dev", &br]);
            g.ip(&[
                "addr",
                "add",
                &format!("{}/24", gw_upstream(k)),
                "dev",
                "gu",
            ]);
            g.ip(&["route", "add", "default", "via", &router_side(k)]);
            for (which, srv, net, gdev, sdev) in [
                ("primary", &primary, 60 + k, "gp", format!("p{k}")),
                ("backup", &backup, 70 + k, "gb", format!("b{k}")),
            ] {
                veth(srv, &sdev, g, gdev);
                srv.ip(&["addr", "add", &format!("198.18.{net}.10/24"), "dev", &sdev]);
                g.ip(&["addr", "add", &format!("198.18.{net}.1/24"), "dev", gdev]);
                let addr = if which == "primary" {
                    PRIMARY_ADDR
                } else {
                    BACKUP_ADDR
                };
                g.ip(&[
                    "route",
                    "add",
                    &format!("{addr}/32"),
                    "via",
                    &format!("198.18.{net}.10"),
                ]);
                srv.exec(&["ethtool", "-K", &sdev, "tx", "off"]);
            }
            veth(&etcd_ns, &format!("e{k}"), g, "ge");
            etcd_ns.ip(&[
                "addr",
                "add",
                &format!("198.18.21{k}.1/24"),
                "dev",
                &format!("e{k}"),
            ]);
            g.ip(&["addr", "add", &format!("198.18.21{k}.2/24"), "dev", "ge"]);
            g.ip(&[
                "route",
                "add",
                "198.18.200.0/24",
                "via",
                &format!("198.18.21{k}.1"),
            ]);
            no_rp_filter(g);
        }
        client.exec(&["ethtool", "-K", "c0", "tx", "off"]);
        for ns in [&client, &router, &primary, &backup, &etcd_ns] {
            no_rp_filter(ns);
        }
        // Frames redirected into a veth are delivered only when its peer runs XDP.
        let pass = {
            let targets: Vec<(String, String)> = (1..=GATEWAYS)
                .flat_map(|k| {
                    [
                        (router.name.clone(), format!("r{k}")),
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
        etcd.start_new();
        let prefix = format!("/ftn-ha-{}", unique_name("k"));
        let router_bird = Bird::start(&router.name, &dir.0, "router", &router_bird());
        let server_birds = vec![
            Bird::start(&primary.name, &dir.0, "primary", &server_bird("primary")),
            Bird::start(&backup.name, &dir.0, "backup", &server_bird("backup")),
        ];
        let birds = (1..=GATEWAYS)
            .map(|k| {
                Bird::start(
                    &gw_ns[k - 1].name,
                    &dir.0,
                    &format!("gw{k}"),
                    &gateway_bird(k),
                )
            })
            .collect();
        let gws: Vec<Ftn> = gw_ns.iter().map(Ftn::new).collect();
        for (i, f) in gws.iter().enumerate() {
            f.write_config(&ha_gateway_config(i + 1, f, &prefix));
        }
        let mut ha = Ha {
            gws,
            birds,
            _router_bird: router_bird,
            server_birds,
            services,
            _pass: pass,
            etcd,
            prefix,
            client,
            router,
            primary,
            backup,
            etcd_ns,
            gw_ns,
            dir,
        };
        for k in 1..=GATEWAYS {
            ha.gws[k - 1].start();
        }
        let all: Vec<usize> = (1..=GATEWAYS).collect();
        ha.wait_route(&all, SESSIONS_UP);
        eprintln!(
            "ha lab: up in {:.1} s (router routes the VIP through gateways {all:?})",
            t.elapsed().as_secs_f64()
        );
        ha
    }

    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// The gateways (by number) the router's route to the VIP goes through now.
    pub fn route_via(&self) -> Vec<usize> {
        let out = self.router.ip(&["route", "show", &format!("{VIP}/32")]);
        let text = String::from_utf8_lossy(&out.stdout);
        (1..=GATEWAYS)
            .filter(|&k| text.contains(&format!("via {} ", gw_upstream(k))))
            .collect()
    }

    /// The gateways the server's route back to the clients goes through now.
    pub fn return_via(&self, which: &str) -> Vec<usize> {
        let (ns, base) = match which {
            "primary" => (&self.primary, 60),
            _ => (&self.backup, 70),
        };
        let out = ns.ip(&["route", "show", CLIENT_NET]);
        let text = String::from_utf8_lossy(&out.stdout);
        (1..=GATEWAYS)
            .filter(|&k| text.contains(&format!("via 198.18.{}.1 ", base + k)))
            .collect()
    }

    /// (router, primary, backup): the gateways each one routes through.
    pub fn paths(&self) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
        (
            self.route_via(),
            self.return_via("primary"),
            self.return_via("backup"),
        )
    }

    /// Waits until the router's route goes through exactly `gateways`; returns how long it took.
    pub fn wait_route(&mut self, gateways: &[usize], within: Duration) -> Duration {
        let t = Instant::now();
        loop {
            self._router_bird.check_alive();
            for b in self.server_birds.iter_mut().chain(self.birds.iter_mut()) {
                b.check_alive();
            }
            let now = self.paths();
            if now.0 == gateways && now.1 == gateways && now.2 == gateways {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < within,
                "(router to {VIP}, primary and backup to {CLIENT_NET}) through gateways {now:?}, expected {gateways:?} within {within:?}; router: {}\nprimary: {}\ngateway tables: {}",
                output_text(&self.router.ip(&["route"])),
                output_text(&self.primary.ip(&["route"])),
                (1..=GATEWAYS)
                    .map(|k| format!("gw{k}: {}", output_text(&self.gw_ns[k - 1].ip(&["route", "show", "table", &ANNOUNCE_TABLE.to_string()]))))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Gateway k's `/metrics` text.
    pub fn metrics(&self, k: usize) -> String {
        crate::lab::in_ns(&self.gw_ns[k - 1], || {
            use std::io::{Read, Write};
            let mut s =
                std::net::TcpStream::connect(crate::cluster::API_LISTEN).expect("connect API");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut raw = String::new();
            let _ = s.read_to_string(&mut raw);
            raw
        })
    }

    /// The VIPs in gateway k's announce table.
    pub fn announced(&self, k: usize) -> String {
        let out = self.gw_ns[k - 1].ip(&["route", "show", "table", &ANNOUNCE_TABLE.to_string()]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A gateway's host dies: every link of its namespace down, then ftn and BIRD SIGKILLed.
    /// The pinned dataplane is detached afterwards (a dead host forwards nothing).
    pub fn kill_host(&mut self, k: usize) {
        let g = &self.gw_ns[k - 1];
        for dev in ["gu", "gp", "gb", "ge"] {
            g.ip(&["link", "set", dev, "down"]);
        }
        self.gws[k - 1].kill9();
        self.birds[k - 1].kill();
        let f = &self.gws[k - 1];
        let _ = f.cli_raw(&["detach", "--pin-dir", f.pin_dir.to_str().unwrap()]);
    }

    /// Brings a dead host back: links up (routes put back), BIRD and ftn started.
    pub fn revive_host(&mut self, k: usize) {
        let g = &self.gw_ns[k - 1];
        for dev in ["gu", "gp", "gb", "ge"] {
            g.ip(&["link", "set", dev, "up"]);
        }
        g.ip(&["route", "replace", "default", "via", &router_side(k)]);
        g.ip(&[
            "route",
            "replace",
            "198.18.200.0/24",
            "via",
            &format!("198.18.21{k}.1"),
        ]);
        for (addr, net) in [(PRIMARY_ADDR, 60 + k), (BACKUP_ADDR, 70 + k)] {
            g.ip(&[
                "route",
                "replace",
                &format!("{addr}/32"),
                "via",
                &format!("198.18.{net}.10"),
            ]);
        }
        self.birds[k - 1] = Bird::start(&g.name, &self.dir.0, &format!("gw{k}"), &gateway_bird(k));
        self.gws[k - 1].start();
    }

    /// Only ftn dies on gateway k (SIGKILL); BIRD and the pinned dataplane stay.
    pub fn kill_ftn(&mut self, k: usize) {
        self.gws[k - 1].kill9();
    }

    pub fn start_ftn(&mut self, k: usize) {
        self.gws[k - 1].start();
    }

    /// `systemctl stop ftn && ftn detach` on gateway k: SIGTERM, then `ftn detach --config`
    /// (withdraw, wait, detach). Returns detach's output.
    pub fn stop_and_detach(&mut self, k: usize) -> String {
        self.gws[k - 1].stop();
        let out = self.gws[k - 1].cli(&["detach"]);
        assert!(
            out.status.success(),
            "ftn detach on gw{k}: {}",
            output_text(&out)
        );
        output_text(&out)
    }

    /// Gateway k can no longer reach etcd (nft drops both ways in its namespace).
    pub fn cut_etcd(&self, k: usize) {
        let script = self.dir().join(format!("cut-etcd-{k}.nft"));
        std::fs::write(
            &script,
            "table inet ftn_ha_cut {\n chain input { type filter hook input priority 0; policy accept; ip saddr 198.18.200.0/24 drop; }\n chain output { type filter hook output priority 0; policy accept; ip daddr 198.18.200.0/24 drop; }\n}\n",
        )
        .unwrap();
        self.gw_ns[k - 1].exec(&["nft", "-f", script.to_str().unwrap()]);
    }

    pub fn heal_etcd(&self, k: usize) {
        self.gw_ns[k - 1].exec(&["nft", "delete", "table", "inet", "ftn_ha_cut"]);
    }

    /// Stops the primary's service (its host stays: checks see connections refused).
    pub fn kill_primary(&mut self) {
        self.services[0] = None;
    }

    pub fn start_primary(&mut self) {
        self.services[0] = Some(Service::start(&self.primary, "primary"));
    }

    /// A prober from the client: a new connection every `every`, the router's ECMP spreading
    /// them over the gateways.
    pub fn probe(&self, every: Duration, max: Duration) -> Prober {
        Prober::start(&self.client, VIP.parse().unwrap(), every, max)
    }

    /// `n` long-lived connections from the client, each asked once; the router's ECMP spreads
    /// them over the gateways.
    pub fn open_conns(&self, n: usize) -> Vec<Conn> {
        open_conns(&self.client, n)
    }

    /// The gateway the router sends the client's TCP connection from `sport` through now
    /// (`ip route get` with the 5-tuple: the kernel's own ECMP choice).
    pub fn gateway_of(&self, sport: u16) -> Option<usize> {
        let out = self.router.ip(&[
            "route",
            "get",
            VIP,
            "from",
            CLIENT_ADDR,
            "iif",
            "r0",
            "ipproto",
            // By number: a minimal system has no /etc/protocols (netbase) for iproute2 to
            // resolve "tcp" with.
            "6",
            "sport",
            &sport.to_string(),
            "dport",
            "80",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        (1..=GATEWAYS).find(|&k| text.contains(&format!("via {} ", gw_upstream(k))))
    }

    /// Long-lived connections, each asked once, until every gateway carries at least
    /// `per_gateway` of them (at most 20 x as many in all); each with its gateway.
    pub fn open_spread(&self, per_gateway: usize) -> Vec<(Conn, usize)> {
        let mut out: Vec<(Conn, usize)> = Vec::new();
        let limit = per_gateway * GATEWAYS * 20;
        while (1..=GATEWAYS).any(|k| out.iter().filter(|c| c.1 == k).count() < per_gateway) {
            assert!(
                out.len() < limit,
                "{limit} connections did not give every gateway {per_gateway}"
            );
            let c = open_conns(&self.client, 1).pop().unwrap();
            let k = self
                .gateway_of(c.local_port())
                .unwrap_or_else(|| panic!("no gateway for port {}", c.local_port()));
            out.push((c, k));
        }
        out
    }
}

/// `n` long-lived connections from `client` to the VIP, each asked once.
pub fn open_conns(client: &Netns, n: usize) -> Vec<Conn> {
    let vip: IpAddr = VIP.parse().unwrap();
    crate::lab::in_ns(client, move || {
        (0..n)
            .map(|i| {
                let mut c = Conn::try_open(vip, MARGIN)
                    .unwrap_or_else(|e| panic!("long-lived connection {i}: {e}"));
                c.try_ask()
                    .unwrap_or_else(|e| panic!("long-lived connection {i}: {e}"));
                c
            })
            .collect()
    })
}

/// Of connections opened with [`Ha::open_spread`], those that no longer work (asked once
/// more): (through gateway `via`, through the others).
pub fn broken_by(conns: &mut [(Conn, usize)], via: usize) -> (Vec<String>, Vec<String>) {
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for (i, (c, k)) in conns.iter_mut().enumerate() {
        if let Err(e) = c.try_ask() {
            let e = format!("connection {i} (through gw{k}): {e}");
            if *k == via {
                on.push(e)
            } else {
                off.push(e)
            }
        }
    }
    (on, off)
}

/// Long-lived connections that no longer work: each is asked once more (in the client's
/// namespace; a socket works wherever it is used once open).
pub fn broken(conns: &mut [Conn]) -> Vec<String> {
    conns
        .iter_mut()
        .enumerate()
        .filter_map(|(i, c)| c.try_ask().err().map(|e| format!("connection {i}: {e}")))
        .collect()
}

/// With ECMP, a dead gateway fails only the new connections hashed to it: the interruption is
/// from `from` to the start of the last probe that failed in the window (0 when none failed).
/// Err when probes still failed at the end of the window (the outage lasted all of it).
pub fn ecmp_outage(samples: &[Sample], from: Duration, to: Duration) -> Result<Duration, String> {
    let in_window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= from && s.at < to && s.done <= to)
        .collect();
    let Some(last_ok) = in_window.iter().rev().find(|s| s.answer.is_some()) else {
        return Err(format!(
            "no probe answered in the window ({} probes)",
            in_window.len()
        ));
    };
    let failed: Vec<&&Sample> = in_window.iter().filter(|s| s.answer.is_none()).collect();
    if failed.iter().any(|s| s.at > last_ok.at) {
        return Err(format!(
            "probes still failed at the end of the window ({} failed of {})",
            failed.len(),
            in_window.len()
        ));
    }
    Ok(failed
        .iter()
        .map(|s| s.at.saturating_sub(from))
        .max()
        .unwrap_or(Duration::ZERO))
}

/// Failed probes in [from, to).
pub fn failed(samples: &[Sample], from: Duration, to: Duration) -> usize {
    crate::ftn::failed_in(samples, from, to).count()
}
