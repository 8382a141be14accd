//! A lab of network namespaces: client, gateway, primary and backup on veth links, with
//! services that answer with their own name. Shared by the namespace tests and the demo.
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
    time::Duration,
};

use crate::{attach_pass, Netns};

pub const VIP4: &str = "198.18.100.1";
pub const VIP6: &str = "2001:2:100::1";
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Topology {
    pub client: Netns,
    pub gateway: Netns,
    pub primary: Netns,
    pub backup: Netns,
}

/// A veth pair created directly inside the two namespaces (never in the root namespace).
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) {
    crate::run(&[
        "ip", "link", "add", a_dev, "netns", &a.name, "type", "veth", "peer", "name", b_dev,
        "netns", &b.name,
    ]);
    a.ip(&["link", "set", a_dev, "up"]);
    b.ip(&["link", "set", b_dev, "up"]);
}

pub fn topology() -> Topology {
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
pub struct Service {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Service {
    pub fn start(ns: &Netns, name: &'static str) -> Service {
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
pub struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(vip: IpAddr) -> Conn {
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

    /// Like [`Conn::open`] with a timeout, returning the error instead of panicking.
    pub fn try_open(vip: IpAddr, timeout: Duration) -> std::io::Result<Conn> {
        Conn::try_open_from(None, vip, timeout)
    }

    /// Like [`Conn::try_open`], from the source address `src` when given (the socket is bound
    /// to it before connecting, so that source-based routing picks the path).
    pub fn try_open_from(
        src: Option<IpAddr>,
        dst: IpAddr,
        timeout: Duration,
    ) -> std::io::Result<Conn> {
        let addr = SocketAddr::new(dst, 80);
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        if let Some(src) = src {
            sock.bind(&SocketAddr::new(src, 0).into())?;
        }
        sock.connect_timeout(&addr.into(), timeout)?;
        let s: TcpStream = sock.into();
        s.set_read_timeout(Some(timeout))?;
        Ok(Conn {
            w: s.try_clone()?,
            r: BufReader::new(s),
        })
    }

    /// The client's port of this connection.
    pub fn local_port(&self) -> u16 {
        self.w.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Like [`Conn::ask`], returning an error text instead of panicking.
    pub fn try_ask(&mut self) -> Result<String, String> {
        self.w.write_all(b"who\n").map_err(|e| e.to_string())?;
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) => Err("connection closed".into()),
            Ok(_) => Ok(line.trim().to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn ask(&mut self) -> String {
        self.w.write_all(b"who\n").expect("send on the connection");
        let mut line = String::new();
        self.r
            .read_line(&mut line)
            .expect("answer on the connection");
        line.trim().to_string()
    }
}

/// One UDP request from a fresh socket; returns (answer, address it came from).
pub fn udp_ask(vip: IpAddr) -> (String, IpAddr) {
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

/// Runs `f` in a thread inside `ns`; `Err` when it panicked.
pub fn try_in_ns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::Result<T> {
    let name = ns.name.clone();
    std::thread::spawn(move || {
        let ns = Netns { name };
        let guard = ns.enter();
        std::mem::forget(ns); // the namespace belongs to the caller, not to this thread
        let r = f();
        drop(guard);
        r
    })
    .join()
}

/// Runs `f` in a thread inside `ns` and returns its result.
pub fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    try_in_ns(ns, f).expect("thread in namespace panicked")
}

/// Attaches the pass-through program on `dev` inside `ns` and keeps it loaded.
pub fn attach_pass_in(ns: &Netns, dev: &'static str) -> aya::Ebpf {
    in_ns(ns, move || attach_pass(dev))
}
