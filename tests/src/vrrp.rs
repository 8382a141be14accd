//! The reference deployment for gateway high availability: two ftn gateways on one segment,
//! the VIP moved between them by keepalived's VRRP (the gateway that is master holds the VIP's
//! address and answers ARP for it) instead of BGP. Each gateway has its own embedded directory
//! and checks the same servers, so both decide the same.
//!
//! ```text
//! client ns                switch ns (bridge br0)     gateway k ns (k = 1, 2)
//! c0 198.18.40.10 -------- s0   s1 ------------------ gu 198.18.40.k   (keepalived, VRRPv3)
//!                               s2 ------------------ (gateway 2)
//!                                                     gp 198.18.(60+k).1 --- primary
//!                                                     gb 198.18.(70+k).1 --- backup
//! ```
//!
//! The servers route the client's network through both gateways (ECMP), detecting a dead one
//! by its link (`ignore_routes_with_linkdown`). Everything is removed on drop.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::cluster::{
    attach_pass_programs, no_rp_filter, nsenter, output_text, TempDir, BACKUP_ADDR, PRIMARY_ADDR,
    VIP,
};
use crate::ftn::{gap, Ftn, Prober};
use crate::lab::{veth, Service};
use crate::timing::{MARGIN, START};
use crate::{require_root, unique_name, Netns};

pub const KEEPALIVED_BIN: &str = "/usr/sbin/keepalived";
/// keepalived's `advert_int` (VRRPv3 counts centiseconds; 10 ms is its smallest).
pub const ADVERT: Duration = Duration::from_millis(10);
/// Long-lived connections per crash (all through the master).
pub const CONNS: usize = 6;
const CLIENT: &str = "198.18.40.10";

/// keepalived in a gateway's namespace: the parent (not forked away) and its VRRP child, both
/// killed by pid on drop.
struct Keepalived {
    child: Option<Child>,
    vrrp_pid: std::path::PathBuf,
}

impl Keepalived {
    fn start(ns: &str, dir: &Path, k: usize) -> Keepalived {
        let conf = dir.join(format!("keepalived{k}.conf"));
        let priority = if k == 1 { 150 } else { 100 };
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n  router_id vgw{k}\n  vrrp_version 3\n  script_user root\n}}\n\
                 vrrp_instance VI {{\n  state BACKUP\n  interface gu\n  virtual_router_id 51\n  priority {priority}\n  advert_int {:.2}\n  virtual_ipaddress {{\n    {VIP}/32 dev gu\n  }}\n}}\n",
                ADVERT.as_secs_f64()
            ),
        )
        .unwrap();
        let vrrp_pid = dir.join(format!("vrrp{k}.pid"));
        let mut cmd = nsenter(ns, KEEPALIVED_BIN);
        cmd.args(["-n", "-l", "-D", "-P", "-G", "-f"])
            .arg(&conf)
            .arg("-p")
            .arg(dir.join(format!("keepalived{k}.pid")))
            .arg("-r")
            .arg(&vrrp_pid);
        let log = dir.join(format!("keepalived{k}.log"));
        let child = crate::ha::spawn_logged(cmd, &log, "keepalived (Debian keepalived)");
        Keepalived {
            child: Some(child),
            vrrp_pid,
        }
    }

    fn kill(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.vrrp_pid)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: plain syscall; the VRRP child of a keepalived this lab started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        crate::ha::kill_child(&mut self.child);
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The lab; fields drop in order: daemons first.
struct Vrrp {
    gws: Vec<Ftn>,
    keepalived: Vec<Keepalived>,
    _services: [Service; 2],
    _pass: aya::Ebpf,
    client: Netns,
    _switch: Netns,
    _primary: Netns,
    _backup: Netns,
    gw_ns: Vec<Netns>,
    _dir: TempDir,
}

fn config(k: usize, f: &Ftn) -> String {
    format!(
        "[gateway]\nname = \"vgw{k}\"\ninterfaces = [\"gu\", \"gp\", \"gb\"]\npin_dir = \"{}\"\n\n[api]\ntoken_file = \"{}\"\n\n[directory]\npath = \"{}\"\n\n\
         [[server]]\nname = \"primary\"\naddress = \"{PRIMARY_ADDR}\"\n\n[[server]]\nname = \"backup\"\naddress = \"{BACKUP_ADDR}\"\n\n\
         [[resource]]\nname = \"web\"\nvip = \"{VIP}\"\nprotocol = \"tcp\"\nports = [80]\nservers = [\"primary\", \"backup\"]\n",
        f.pin_dir.display(),
        f.token_file().display(),
        f.state_dir.display()
    )
}

impl Vrrp {
    fn start() -> Vrrp {
        require_root();
        let dir = TempDir(std::env::temp_dir().join(format!("ftn-vrrp-{}", unique_name("d"))));
        std::fs::create_dir_all(&dir.0).unwrap();
        let client = Netns::new("ftvc");
        let switch = Netns::new("ftvs");
        let primary = Netns::new("ftvp");
        let backup = Netns::new("ftvb");
        let gw_ns: Vec<Netns> = (1..=2).map(|_| Netns::new("ftvg")).collect();
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        veth(&client, "c0", &switch, "s0");
        client.ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "c0"]);
        client.ip(&["route", "add", &format!("{VIP}/32"), "dev", "c0"]);
        client.exec(&["ethtool", "-K", "c0", "tx", "off"]);
        for (ns, addr) in [(&primary, PRIMARY_ADDR), (&backup, BACKUP_ADDR)] {
            ns.ip(&["addr", "add", &format!("{addr}/32"), "dev", "lo"]);
            ns.exec(&["sysctl", "-q", "-w", "net.ipv4.fib_multipath_hash_policy=1"]);
            ns.exec(&[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.conf.all.ignore_routes_with_linkdown=1",
            ]);
        }
        let mut hops: [Vec<String>; 2] = [Vec::new(), Vec::new()];
        for (i, g) in gw_ns.iter().enumerate() {
            let k = i + 1;
            g.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
            let s = format!("s{k}");
            veth(&switch, &s, g, "gu");
            g.ip(&["addr", "add", &format!("198.18.40.{k}/24"), "dev", "gu"]);
            for (j, (srv, base, gdev, sdev)) in [
                (&primary, 60, "gp", format!("p{k}")),
                (&backup, 70, "gb", format!("b{k}")),
            ]
            .into_iter()
            .enumerate()
            {
                let net = base + k;
                veth(srv, &sdev, g, gdev);
                srv.ip(&["addr", "add", &format!("198.18.{net}.10/24"), "dev", &sdev]);
                g.ip(&["addr", "add", &format!("198.18.{net}.1/24"), "dev", gdev]);
                let addr = if j == 0 { PRIMARY_ADDR } else { BACKUP_ADDR };
                g.ip(&[
                    "route",
                    "add",
                    &format!("{addr}/32"),
                    "via",
                    &format!("198.18.{net}.10"),
                ]);
                hops[j].extend(
                    ["nexthop", "via", &format!("198.18.{net}.1"), "dev", &sdev].map(String::from),
                );
                srv.exec(&["ethtool", "-K", &sdev, "tx", "off"]);
            }
            no_rp_filter(g);
        }
        for dev in ["s0", "s1", "s2"] {
            switch.ip(&["link", "set", dev, "master", "br0"]);
        }
        switch.ip(&["link", "set", "br0", "up"]);
        for (ns, h) in [(&primary, &hops[0]), (&backup, &hops[1])] {
            let mut args = vec!["route", "add", "198.18.40.0/24"];
            args.extend(h.iter().map(String::as_str));
            ns.ip(&args);
        }
        for ns in [&client, &primary, &backup] {
            no_rp_filter(ns);
        }
        let pass = {
            let targets: Vec<(String, String)> = (1..=2)
                .flat_map(|k| {
                    [
                        (switch.name.clone(), format!("s{k}")),
                        (primary.name.clone(), format!("p{k}")),
                        (backup.name.clone(), format!("b{k}")),
                    ]
                })
                .collect();
            attach_pass_programs(targets)
        };
        let services = [
            Service::start(&primary, "primary"),
            Service::start(&backup, "backup"),
        ];
        let mut gws: Vec<Ftn> = gw_ns.iter().map(Ftn::new).collect();
        for (i, f) in gws.iter_mut().enumerate() {
            f.write_config(&config(i + 1, f));
            f.start();
        }
        let keepalived = (1..=2)
            .map(|k| Keepalived::start(&gw_ns[k - 1].name, &dir.0, k))
            .collect();
        let v = Vrrp {
            gws,
            keepalived,
            _services: services,
            _pass: pass,
            client,
            _switch: switch,
            _primary: primary,
            _backup: backup,
            gw_ns,
            _dir: dir,
        };
        v.wait_master(1, START + MARGIN);
        v
    }

    /// Gateway k holds the VIP's address (it is, or was when it died, the VRRP master).
    fn holds_vip(&self, k: usize) -> bool {
        let out = self.gw_ns[k - 1].ip(&["addr", "show", "dev", "gu"]);
        String::from_utf8_lossy(&out.stdout).contains(&format!("{VIP}/32"))
    }

    fn wait_master(&self, k: usize, within: Duration) -> Duration {
        let t = Instant::now();
        while !self.holds_vip(k) {
            assert!(
                t.elapsed() < within,
                "gateway {k} is not the VRRP master within {within:?}; gateway {k}: {}",
                output_text(&self.gw_ns[k - 1].ip(&["addr", "show", "dev", "gu"]))
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        t.elapsed()
    }

    /// The master's host dies: its server links down, everything arriving on its segment link
    /// dropped (nft, netdev ingress) while that link stays up, as a hung host's switch port
    /// does (the switch keeps sending it the VIP's frames until the new master's gratuitous
    /// ARP), then ftn and keepalived SIGKILLed and the dataplane detached.
    fn kill_host(&mut self, k: usize) {
        let g = &self.gw_ns[k - 1];
        for dev in ["gp", "gb"] {
            g.ip(&["link", "set", dev, "down"]);
        }
        let out = g.exec(&[
            "nft",
            "add table netdev ftn_dead; add chain netdev ftn_dead in { type filter hook ingress device \"gu\" priority 0; policy drop; }",
        ]);
        assert!(out.status.success(), "nft in gw{k}: {}", output_text(&out));
        self.gws[k - 1].kill9();
        self.keepalived[k - 1].kill();
        let f = &self.gws[k - 1];
        let _ = f.cli_raw(&["detach", "--pin-dir", f.pin_dir.to_str().unwrap()]);
    }
}

pub struct VrrpResult {
    pub gaps: Vec<f64>,
    pub broken: usize,
}

/// `reps` deaths of the master, each in a fresh lab: the interruption for new connections and
/// the long-lived connections that broke.
pub fn crash_reference(reps: usize) -> Result<VrrpResult, String> {
    let mut gaps = Vec::new();
    let mut broken = 0;
    for rep in 0..reps {
        eprintln!(
            "   ha: keepalived reference, repetition {} of {reps}",
            rep + 1
        );
        let mut v = Vrrp::start();
        let mut conns = crate::ha::open_conns(&v.client, CONNS);
        let p = Prober::start(
            &v.client,
            VIP.parse().unwrap(),
            Duration::from_millis(10),
            Duration::from_secs(20),
        );
        std::thread::sleep(Duration::from_millis(500));
        let t0 = p.now();
        v.kill_host(1);
        v.wait_master(2, ADVERT * 4 + MARGIN);
        std::thread::sleep(Duration::from_secs(1));
        let t1 = p.now();
        let s = p.finish();
        let g = gap(&s, t0, t1);
        gaps.push(
            g.closed_ms()
                .map_err(|e| format!("repetition {}: {e}", rep + 1))?
                .round(),
        );
        broken += crate::ha::broken(&mut conns).len();
    }
    Ok(VrrpResult { gaps, broken })
}
