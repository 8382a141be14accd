//! Shared helpers of ftn's root tests: network namespaces that clean up after themselves,
//! commands that fail loudly, and the root/BPF precondition check.
//!
//! Every name (namespace, link, pin directory) carries the process id and a counter, so two
//! runs never collide, and every guard removes what it made on drop, also when a test panics.

pub mod bench;
pub mod cluster;
pub mod etcd;
pub mod frames;
pub mod ftn;
pub mod gateway;
pub mod ha;
pub mod vrrp;
pub mod lab;
pub mod timing;

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<prefix><pid>x<n>` (at most 15 characters for
/// prefixes of up to 4 characters, the kernel's limit for interface names).
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}x{n}", std::process::id());
    assert!(name.len() <= 15, "name {name} is too long for an interface");
    name
}

/// Fails the test loudly unless we are root with BPF: these tests never skip silently.
pub fn require_root() {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "THIS TEST NEEDS ROOT (CAP_BPF, CAP_NET_ADMIN): run it through `sudo cargo xtask test` \
         (CI runs as root); it is not skipped"
    );
}

/// Runs a command and panics with the command line, status and stderr when it fails.
pub fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`{}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command and returns whether it succeeded (for clean-up paths that must not panic).
pub fn run_quiet(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A network namespace deleted (with every link inside it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Self {
        let name = unique_name(prefix);
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace (panics on failure).
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// Runs `ip <args>` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// A veth pair inside the namespace: `dev` with MAC `mac`, its peer `{dev}p`; both up.
    pub fn veth_with_mac(&self, dev: &str, mac: [u8; 6]) {
        let peer = format!("{dev}p");
        self.ip(&[
            "link",
            "add",
            dev,
            "address",
            &mac_text(mac),
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        self.ip(&["link", "set", dev, "up"]);
        self.ip(&["link", "set", &peer, "up"]);
    }

    /// A permanent neighbour entry: `ip` is at `mac` on `dev`.
    pub fn neigh_permanent(&self, ip: &str, mac: [u8; 6], dev: &str) {
        self.ip(&[
            "neigh",
            "replace",
            ip,
            "lladdr",
            &mac_text(mac),
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
    }

    /// The interface index of `dev` in the namespace.
    pub fn ifindex(&self, dev: &str) -> Result<u32, String> {
        let out = self.exec(&["cat", &format!("/sys/class/net/{dev}/ifindex")]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|e| format!("ifindex of {dev}: {e}"))
    }

    /// Moves the calling thread into the namespace. Only this thread changes namespace; the
    /// guard returned moves it back on drop.
    pub fn enter(&self) -> EnteredNetns {
        let own = File::open("/proc/thread-self/ns/net").expect("open own netns");
        let target = File::open(format!("/run/netns/{}", self.name))
            .unwrap_or_else(|e| panic!("open netns {}: {e}", self.name));
        // SAFETY: valid fds, CLONE_NEWNET.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns into {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
        EnteredNetns { previous: own }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !run_quiet(&["ip", "netns", "del", &self.name]) {
            eprintln!("warning: could not delete netns {}", self.name);
        }
    }
}

/// Returned by [`Netns::enter`]: moves the thread back to its namespace on drop.
pub struct EnteredNetns {
    previous: File,
}

impl Drop for EnteredNetns {
    fn drop(&mut self) {
        // SAFETY: valid fd, CLONE_NEWNET.
        let rc = unsafe { libc::setns(self.previous.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            eprintln!("warning: could not return to the original netns");
        }
    }
}

/// A directory under /sys/fs/bpf removed (with what is pinned in it) on drop.
pub struct PinDir {
    pub path: std::path::PathBuf,
}

impl PinDir {
    pub fn new() -> Self {
        let path = std::path::PathBuf::from(format!("/sys/fs/bpf/{}", unique_name("ftnt")));
        PinDir { path }
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.path.exists() {
            if let Err(e) = ftn_controller::dataplane::detach(&self.path) {
                eprintln!("warning: clean-up of {}: {e}", self.path.display());
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
    }
}

/// Formats a frame as hex, 16 bytes a line, with offsets.
pub fn hex(frame: &[u8]) -> String {
    let mut s = String::new();
    for (i, chunk) in frame.chunks(16).enumerate() {
        s.push_str(&format!("  {:04x}:", i * 16));
        for b in chunk {
            s.push_str(&format!(" {b:02x}"));
        }
        s.push('\n');
    }
    s
}

/// Attaches the object's pass-through program (`ftn_pass`) in native mode to `interface` in
/// the calling thread's namespace: a frame redirected into a veth is delivered only when the
/// peer has an XDP program. The maps are shrunk to one entry: only the program is used.
/// Detached when the returned object is dropped.
pub fn attach_pass(interface: &str) -> aya::Ebpf {
    let mut ebpf = load_pass();
    pass_program(&mut ebpf)
        .attach(interface, aya::programs::XdpMode::Driver)
        .unwrap_or_else(|e| panic!("attach ftn_pass to {interface}: {e}"));
    ebpf
}

/// The eBPF object with its pass-through program (`ftn_pass`) loaded into the kernel but not
/// attached (maps shrunk to one entry: only the program is used). Attach it with
/// [`pass_program`] and `attach`, once per interface: the links live as long as the object.
pub fn load_pass() -> aya::Ebpf {
    let mut loader = aya::EbpfLoader::new();
    loader.map_max_entries(ftn_common::map_names::FLOWS, 1);
    let mut ebpf = loader
        .load(ftn_controller::dataplane::ebpf_object().expect("the embedded eBPF object"))
        .expect("load the eBPF object for ftn_pass");
    pass_program(&mut ebpf).load().expect("load ftn_pass");
    ebpf
}

/// `ftn_pass` in an object from [`load_pass`].
pub fn pass_program(ebpf: &mut aya::Ebpf) -> &mut aya::programs::Xdp {
    ebpf.program_mut("ftn_pass")
        .expect("ftn_pass in the object")
        .try_into()
        .expect("ftn_pass is XDP")
}

/// `struct xdp_md` for `BPF_PROG_TEST_RUN`'s `ctx_in`: { data = 0, data_end = len, data_meta = 0,
/// ingress_ifindex, rx_queue_index = 0, egress_ifindex = 0 }.
pub fn xdp_md(ingress: u32, len: usize) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(24);
    for w in [0u32, len as u32, 0, ingress, 0, 0] {
        ctx.extend_from_slice(&w.to_ne_bytes());
    }
    ctx
}

/// A MAC address as `ip link` takes it (`02:00:00:00:00:01`).
pub fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
