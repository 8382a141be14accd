//! Network-namespace smoke test of the dataplane: a client, a gateway (ftn's XDP program
//! attached in native mode by the aya `Dataplane`) and two servers, on veth links.
//!
//! - A real TCP connection and a UDP request to the VIP, over IPv4 and IPv6, are answered by
//!   the primary, and the client only ever sees the VIP.
//! - After the resource is switched to the backup in the maps, new connections and requests
//!   reach the backup, while a TCP connection opened before the switch (to the still-healthy
//!   primary) keeps working.
//!
//! ```text
//! client ns            gateway ns                   primary ns / backup ns
//! c0 198.18.1.10 ---- g0 198.18.1.1
//!                     g1 198.18.2.1 ---------------- p0 198.18.2.10
//!                     g2 198.18.3.1 ---------------- b0 198.18.3.10
//! (and 2001:2:1::/64, 2001:2:2::/64, 2001:2:3::/64)   VIPs 198.18.100.1, 2001:2:100::1
//! ```

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ftn_controller::dataplane::{
    AyaDataplane, AyaOptions, Dataplane, NoServerAction, Protocol, ResourceAssignment,
    ResourceMatch, ServerEntry, XdpAttachMode,
};
use ftn_tests::{attach_pass, require_root, Netns};

const VIP4: &str = "198.18.100.1";
const VIP6: &str = "2001:2:100::1";
const IO_TIMEOUT: Duration = Duration::from_secs(3);

struct Topology {
    client: Netns,
    gateway: Netns,
    primary: Netns,
    backup: Netns,
}

/// A veth pair created directly inside the two namespaces (never in the root namespace).
fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) {
    ftn_tests::run(&[
        "ip", "link", "add", a_dev, "netns", &a.name, "type", "veth", "peer", "name", b_dev,
        "netns", &b.name,
    ]);
    a.ip(&["link", "set", a_dev, "up"]);
    b.ip(&["link", "set", b_dev, "up"]);
}

fn topology() -> Topology {
    let t = Topology {
        client: Netns::new("ftc"),
        gateway: Netns::new("ftg"),
        primary: Netns::new("ftp"),
        backup: Netns::new("ftb"),
    };
    let g = &t.gateway;
    g.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    g.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
    // Replies SNATed by XDP but passed to the kernel (neighbour not resolved yet) come from a
    // VIP that is not routed via their ingress interface: no reverse-path filter.
    g.exec(&["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0"]);
    g.exec(&["sysctl", "-q", "-w", "net.ipv4.conf.default.rp_filter=0"]);
    veth(&t.client, "c0", g, "g0");
    veth(&t.primary, "p0", g, "g1");
    veth(&t.backup, "b0", g, "g2");
    for (ns, dev, a4, a6) in [
        (&t.client, "c0", "198.18.1.10/24", "2001:2:1::10/64"),
        (g, "g0", "198.18.1.1/24", "2001:2:1::1/64"),
        (g, "g1", "198.18.2.1/24", "2001:2:2::1/64"),
        (&t.primary, "p0", "198.18.2.10/24", "2001:2:2::10/64"),
        (g, "g2", "198.18.3.1/24", "2001:2:3::1/64"),
        (&t.backup, "b0", "198.18.3.10/24", "2001:2:3::10/64"),
    ] {
        ns.ip(&["addr", "add", a4, "dev", dev]);
        ns.ip(&["addr", "add", a6, "dev", dev, "nodad"]);
        if !std::ptr::eq(ns, g) {
            ns.exec(&[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv4.conf.{dev}.rp_filter=0"),
            ]);
        }
    }
    // Hosts' veths hand out CHECKSUM_PARTIAL packets (checksum left to "hardware"); a real NIC
    // puts full checksums on the wire, so the lab's hosts compute them in software.
    for (ns, dev) in [(&t.client, "c0"), (&t.primary, "p0"), (&t.backup, "b0")] {
        ns.exec(&["ethtool", "-K", dev, "tx", "off"]);
    }
    g.exec(&[
        "sh",
        "-c",
        "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done",
    ]);
    for (ns, gw4, gw6) in [
        (&t.client, "198.18.1.1", "2001:2:1::1"),
        (&t.primary, "198.18.2.1", "2001:2:2::1"),
        (&t.backup, "198.18.3.1", "2001:2:3::1"),
    ] {
        ns.ip(&["route", "add", "default", "via", gw4]);
        ns.ip(&["-6", "route", "add", "default", "via", gw6]);
    }
    t
}

/// A TCP and UDP service in a namespace that answers every line / datagram with its name.
struct Service {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Service {
    fn start(ns: &Netns, name: &'static str) -> Service {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        {
            let (stop, ns_name, ready) = (stop.clone(), ns.name.clone(), ready_tx.clone());
            threads.push(std::thread::spawn(move || {
                let ns = Netns { name: ns_name };
                let _in = ns.enter();
                std::mem::forget(ns); // owned by the test, not by this thread
                let l = TcpListener::bind("[::]:80").expect("bind tcp/80");
                l.set_nonblocking(true).unwrap();
                ready.send(()).unwrap();
                let mut conns: Vec<JoinHandle<()>> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((s, _)) => {
                            let stop = stop.clone();
                            conns.push(std::thread::spawn(move || serve_tcp(s, name, &stop)));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            }));
        }
        {
            let (stop, ns_name, ready) = (stop.clone(), ns.name.clone(), ready_tx);
            threads.push(std::thread::spawn(move || {
                let ns = Netns { name: ns_name };
                let _in = ns.enter();
                std::mem::forget(ns);
                let s = UdpSocket::bind("[::]:53").expect("bind udp/53");
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                ready.send(()).unwrap();
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(name.as_bytes(), from);
                    }
                }
            }));
        }
        for _ in 0..2 {
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("service ready");
        }
        Service { stop, threads }
    }
}

fn serve_tcp(s: TcpStream, name: &str, stop: &AtomicBool) {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if w.write_all(format!("{name}\n").as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// An open TCP connection from the client to the VIP.
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(vip: IpAddr) -> Conn {
        let addr = SocketAddr::new(vip, 80);
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
        assert_eq!(s.peer_addr().unwrap(), addr, "the client must see the VIP");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        Conn {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    fn ask(&mut self) -> String {
        self.w.write_all(b"who\n").expect("send on the connection");
        let mut line = String::new();
        self.r
            .read_line(&mut line)
            .expect("answer on the connection");
        line.trim().to_string()
    }
}

/// One UDP request from a fresh socket; returns (answer, address it came from).
fn udp_ask(vip: IpAddr) -> (String, IpAddr) {
    let bind = if vip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let s = UdpSocket::bind(bind).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    // The first datagram may race neighbour resolution: bounded retries.
    for _ in 0..6 {
        s.send_to(b"who", SocketAddr::new(vip, 53)).unwrap();
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            return (String::from_utf8_lossy(&buf[..n]).to_string(), from.ip());
        }
    }
    panic!("no UDP answer from {vip}:53");
}

/// Runs `f` in a thread inside `ns` and returns its result.
fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let name = ns.name.clone();
    std::thread::spawn(move || {
        let ns = Netns { name };
        let guard = ns.enter();
        std::mem::forget(ns);
        let r = f();
        drop(guard);
        r
    })
    .join()
    .expect("thread in namespace panicked")
}

fn assign(dp: &mut AyaDataplane, vip: IpAddr, rid: u32, server: u32) {
    for (proto, port) in [(Protocol::Tcp, 80), (Protocol::Udp, 53)] {
        dp.set_resource(
            &ResourceMatch {
                vip,
                protocol: proto,
                port,
            },
            &ResourceAssignment {
                resource_id: rid,
                server: Some(server),
                generation: 1,
                on_no_server: NoServerAction::Drop,
            },
        )
        .unwrap();
    }
}

#[test]
fn netns_smoke() {
    require_root();
    let started = Instant::now();
    let t = topology();

    // Pass-through XDP on the veth peers so redirected frames are delivered.
    let _pass_c = in_ns_keep(&t.client, "c0");
    let _pass_p = in_ns_keep(&t.primary, "p0");
    let _pass_b = in_ns_keep(&t.backup, "b0");

    let _svc_p = Service::start(&t.primary, "primary");
    let _svc_b = Service::start(&t.backup, "backup");

    // The gateway: load and attach in its namespace (the thread stays there: the Dataplane's
    // interface names resolve in the namespace of the calling thread).
    let _g = t.gateway.enter();
    let mut dp = AyaDataplane::load(&AyaOptions {
        interfaces: vec!["g0".into(), "g1".into(), "g2".into()],
        mode: XdpAttachMode::Native,
        ..AyaOptions::default()
    })
    .expect("load and attach ftn on the gateway");
    for a in dp.attached() {
        println!(
            "attached to {} (ifindex {}) in {} mode",
            a.interface, a.ifindex, a.mode
        );
    }
    let vip4: IpAddr = VIP4.parse().unwrap();
    let vip6: IpAddr = VIP6.parse().unwrap();
    // Servers: 0/1 primary v4/v6, 2/3 backup v4/v6.
    for (id, addr) in [
        (0, "198.18.2.10"),
        (1, "2001:2:2::10"),
        (2, "198.18.3.10"),
        (3, "2001:2:3::10"),
    ] {
        dp.set_server(
            id,
            &ServerEntry {
                addr: addr.parse().unwrap(),
                up: true,
                generation: 1,
            },
        )
        .unwrap();
    }
    assign(&mut dp, vip4, 0, 0);
    assign(&mut dp, vip6, 1, 1);

    // Before the switch: everything reaches the primary; the client sees only the VIP.
    let (long4, long6, before) = in_ns_or_dump(&dp, &t, move || {
        let mut c4 = Conn::open(vip4);
        let mut c6 = Conn::open(vip6);
        let r = (c4.ask(), c6.ask(), udp_ask(vip4), udp_ask(vip6));
        (c4, c6, r)
    });
    println!(
        "before the switch: tcp4 {} tcp6 {} udp4 {:?} udp6 {:?}",
        before.0, before.1, before.2, before.3
    );
    assert_eq!(before.0, "primary", "IPv4 TCP before the switch");
    assert_eq!(before.1, "primary", "IPv6 TCP before the switch");
    assert_eq!(
        before.2,
        ("primary".to_string(), vip4),
        "IPv4 UDP answer must come from the VIP"
    );
    assert_eq!(
        before.3,
        ("primary".to_string(), vip6),
        "IPv6 UDP answer must come from the VIP"
    );

    // Switch both resources to the backup in the maps.
    assign(&mut dp, vip4, 0, 2);
    assign(&mut dp, vip6, 1, 3);

    let after = in_ns_or_dump(&dp, &t, move || {
        let mut long4 = long4;
        let mut long6 = long6;
        let mut n4 = Conn::open(vip4);
        let mut n6 = Conn::open(vip6);
        (
            n4.ask(),
            n6.ask(),
            udp_ask(vip4),
            udp_ask(vip6),
            long4.ask(),
            long6.ask(),
        )
    });
    println!(
        "after the switch: new tcp4 {} new tcp6 {} udp4 {:?} udp6 {:?}; connections opened before: tcp4 {} tcp6 {}",
        after.0, after.1, after.2, after.3, after.4, after.5
    );
    assert_eq!(
        after.0, "backup",
        "new IPv4 TCP connection after the switch"
    );
    assert_eq!(
        after.1, "backup",
        "new IPv6 TCP connection after the switch"
    );
    assert_eq!(
        after.2,
        ("backup".to_string(), vip4),
        "IPv4 UDP after the switch"
    );
    assert_eq!(
        after.3,
        ("backup".to_string(), vip6),
        "IPv6 UDP after the switch"
    );
    assert_eq!(
        after.4, "primary",
        "the IPv4 connection opened before the switch stays on the primary"
    );
    assert_eq!(
        after.5, "primary",
        "the IPv6 connection opened before the switch stays on the primary"
    );

    let stats = dp.global_stats().unwrap();
    let redirected = stats
        .iter()
        .find(|(c, _)| *c == ftn_common::GlobalCounter::Redirect)
        .unwrap()
        .1;
    let r0 = dp.resource_stats(0).unwrap();
    println!("gateway: {redirected} packets redirected by XDP; resource v4: {r0:?}");
    assert!(
        redirected > 0,
        "XDP must have forwarded packets itself (redirect counter is 0)"
    );
    assert!(
        r0.new_flows >= 4 && r0.reply_packets > 0,
        "resource counters: {r0:?}"
    );
    println!("netns smoke test took {:?}", started.elapsed());
}

/// Attaches the pass-through program on `dev` inside `ns` and keeps it loaded.
fn in_ns_keep(ns: &Netns, dev: &'static str) -> aya::Ebpf {
    in_ns(ns, move || attach_pass(dev))
}

/// Runs `f` in the client namespace; when it panics, prints the gateway's counters and the
/// namespaces' neighbour tables before failing, so a CI log says where packets went.
fn in_ns_or_dump<T: Send + 'static>(
    dp: &AyaDataplane,
    t: &Topology,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let name = t.client.name.clone();
    let r = std::thread::spawn(move || {
        let ns = Netns { name };
        let guard = ns.enter();
        std::mem::forget(ns);
        let r = f();
        drop(guard);
        r
    })
    .join();
    match r {
        Ok(v) => v,
        Err(_) => {
            for (c, v) in dp.global_stats().unwrap() {
                if v != 0 {
                    eprintln!("gateway counter {} = {v}", c.name());
                }
            }
            for ns in [&t.client, &t.gateway, &t.primary, &t.backup] {
                let out = ftn_tests::run(&["ip", "-n", &ns.name, "neigh"]);
                eprintln!(
                    "neighbours in {}:\n{}",
                    ns.name,
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            panic!("the client failed (see above)");
        }
    }
}
