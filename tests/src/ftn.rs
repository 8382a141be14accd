//! The real `ftn` binary in a lab: a config written to a private directory, `ftn run` started
//! in the gateway's namespace, the CLI run there too, and everything (process, pinned
//! dataplane, state directory) removed on drop, also when a test panics.

use std::{
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{lab::Conn, unique_name, Netns};

/// The `ftn` binary built next to this test (target/<profile>/ftn), or `$FTN_BIN`.
pub fn ftn_bin() -> PathBuf {
    if let Ok(p) = std::env::var("FTN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    for dir in exe.ancestors().skip(1).take(3) {
        let p = dir.join("ftn");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "the ftn binary was not found next to {} (build it with `cargo build -p ftn-controller`, \
         or set FTN_BIN); `cargo xtask test` builds it first",
        exe.display()
    );
}

/// Lab servers (names, addresses) as the configs below declare them.
pub const PRIMARY4: &str = "198.18.2.10";
pub const BACKUP4: &str = "198.18.3.10";
pub const PRIMARY6: &str = "2001:2:2::10";
pub const BACKUP6: &str = "2001:2:3::10";

/// A config for the standard lab topology: servers p1 (primary) and b1 (backup), each with a
/// TCP check on port 80 (plus `check_extra` inside the check table), and resource `web`
/// (VIP4:80/tcp) and `web6` (VIP6:80/tcp) with `resource_extra` lines added to both.
pub fn lab_config(
    pin_dir: &Path,
    state_dir: &Path,
    token_file: &Path,
    check: &str,
    resource_extra: &str,
) -> String {
    format!(
        r#"# written by the ftn lab
[gateway]
interfaces = ["g0", "g1", "g2"]
pin_dir = "{pin}"

[api]
listen = "127.0.0.1:7480"
token_file = "{token}"

[directory]
backend = "embedded"
path = "{state}"

[[server]]
name = "p1"
address = "{PRIMARY4}"
checks = [{{ type = "tcp", port = 80{check} }}]

[[server]]
name = "b1"
address = "{BACKUP4}"
checks = [{{ type = "tcp", port = 80{check} }}]

[[server]]
name = "p6"
address = "{PRIMARY6}"
checks = [{{ type = "tcp", port = 80{check} }}]

[[server]]
name = "b6"
address = "{BACKUP6}"
checks = [{{ type = "tcp", port = 80{check} }}]

[[resource]]
name = "web"
vip = "{vip4}"
protocol = "tcp"
ports = [80]
servers = ["p1", "b1"]
{resource_extra}

[[resource]]
name = "web6"
vip = "{vip6}"
protocol = "tcp"
ports = [80]
servers = ["p6", "b6"]
{resource_extra}
"#,
        pin = pin_dir.display(),
        token = token_file.display(),
        state = state_dir.display(),
        vip4 = crate::lab::VIP4,
        vip6 = crate::lab::VIP6,
    )
}

pub const TOKEN: &str = "lab-token-0123456789";

/// A running (or stopped) `ftn run` in a namespace, with its files.
pub struct Ftn {
    pub ns: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    runs: u32,
    /// Run `ftn` with this open-file limit (soft and hard), as systemd's `LimitNOFILE=` does.
    pub nofile: Option<u64>,
}

impl Ftn {
    /// Files for a controller in `ns` (nothing runs yet). `config` gets the paths through
    /// `lab_config`-style placeholders already filled by the caller via [`Ftn::paths`].
    pub fn new(ns: &Netns) -> Ftn {
        let dir = std::env::temp_dir().join(format!("ftn-lab-{}", unique_name("d")));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        Ftn {
            ns: ns.name.clone(),
            config: dir.join("ftn.toml"),
            pin_dir: PathBuf::from("/sys/fs/bpf").join(unique_name("ftnl")),
            state_dir: dir.join("state"),
            log: dir.join("ftn.log"),
            dir,
            child: None,
            runs: 0,
            nofile: None,
        }
    }

    /// `ftn` in the gateway's network namespace. `nsenter --net`, not `ip netns exec`: the
    /// latter also remounts /sys for the namespace, which hides the BPF filesystem (and the
    /// pinned dataplane) from the process.
    fn in_gateway(&self) -> Command {
        let mut c = match self.nofile {
            // prlimit execs nsenter, which execs ftn: the child's pid stays ftn's.
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg("nsenter");
                c
            }
            None => Command::new("nsenter"),
        };
        c.arg(format!("--net=/run/netns/{}", self.ns))
            .arg("--")
            .arg(ftn_bin());
        c
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.join("token")
    }

    /// The standard lab config with these check options and resource lines.
    pub fn standard_config(&self, check: &str, resource_extra: &str) -> String {
        lab_config(
            &self.pin_dir,
            &self.state_dir,
            &self.token_file(),
            check,
            resource_extra,
        )
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    /// Starts `ftn run` and waits until its API answers ([`crate::timing::START`] at most).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "ftn is already running");
        self.runs += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        writeln!(&log, "==== ftn run #{} ====", self.runs).unwrap();
        let child = self
            .in_gateway()
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn ftn run");
        self.child = Some(child);
        let deadline = Instant::now() + crate::timing::START;
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("ftn run exited early ({st}); its log:\n{}", self.log_text());
            }
            let out = self.cli(&["status", "--json"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ftn run did not answer within {:?}; its log:\n{}",
                crate::timing::START,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `ftn run` expecting it to fail; returns its exit status and log.
    pub fn start_expect_failure(&mut self) -> String {
        let out = self
            .in_gateway()
            .args(["run", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "ftn run was expected to fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills the controller with SIGKILL (a crash): the dataplane stays pinned.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `nsenter` execs ftn, so the child's pid is ftn's.
            // SAFETY: plain syscall on a pid we spawned.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// Stops the controller with SIGTERM and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: as above.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    // SAFETY: as above.
                    unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
                    let _ = c.wait();
                    panic!("ftn did not stop within 10 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Sends SIGHUP (reload).
    pub fn hup(&self) {
        let pid = self.pid().expect("running");
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    }

    /// Runs `ftn <args> --config <ours>` in the gateway namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.in_gateway()
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run the ftn cli")
    }

    /// Runs `ftn <args>` as given (no --config added).
    pub fn cli_raw(&self, args: &[&str]) -> Output {
        self.in_gateway()
            .args(args)
            .output()
            .expect("run the ftn cli")
    }

    /// `ftn <args>` must succeed; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "`ftn {}` failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The daemon's status as JSON.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.cli_ok(&["status", "--json"])).expect("status json")
    }

    /// The daemon's status as JSON, or why it could not be had (daemon not answering).
    pub fn try_status(&self) -> Result<serde_json::Value, String> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return Err(format!(
                "`ftn status --json` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("status json: {e}"))
    }

    /// Whether this harness started `ftn run` and has not stopped or killed it since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Current server of a resource, per the daemon.
    pub fn current(&self, resource: &str) -> Option<String> {
        let st = self.status();
        st["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == resource)
            .and_then(|r| r["current"].as_str().map(String::from))
    }

    /// Waits (bounded) until `resource` is on `server`.
    pub fn wait_current(&self, resource: &str, server: Option<&str>, within: Duration) -> Duration {
        let t = Instant::now();
        loop {
            if self.current(resource).as_deref() == server {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < within,
                "{resource} did not move to {server:?} within {within:?}; status: {}\nlog:\n{}",
                self.status(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn events(&self) -> String {
        self.cli_ok(&["events", "--limit", "1000"])
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Raw HTTP against the API from the gateway namespace (for malformed-input tests):
    /// returns (status code, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        let ns = Netns {
            name: self.ns.clone(),
        };
        let (method, path, token, body) = (
            method.to_string(),
            path.to_string(),
            token.map(String::from),
            body.map(String::from),
        );
        let r = crate::lab::in_ns(&ns, move || {
            use std::io::Read;
            let mut s = std::net::TcpStream::connect("127.0.0.1:7480").expect("connect API");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let body = body.unwrap_or_default();
            let mut req = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: application/json\r\n",
                body.len()
            );
            if let Some(t) = token {
                req.push_str(&format!("Authorization: Bearer {t}\r\n"));
            }
            req.push_str("\r\n");
            req.push_str(&body);
            s.write_all(req.as_bytes()).unwrap();
            let mut raw = String::new();
            let _ = s.read_to_string(&mut raw);
            let code = raw
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let body = raw.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            (code, body)
        });
        std::mem::forget(ns);
        r
    }
}

impl Drop for Ftn {
    fn drop(&mut self) {
        self.kill9();
        let _ = Command::new(ftn_bin())
            .args(["detach", "--pin-dir"])
            .arg(&self.pin_dir)
            .output();
        if std::thread::panicking() {
            eprintln!(
                "---- ftn log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One client probe: when it was due to start, who answered (None: failed), and when it ended
/// (the answer, or the failure); both times from the prober's start.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Duration,
    pub answer: Option<String>,
    pub done: Duration,
}

/// A probe that gets no answer within this time failed ([`Prober::start`]); the connect and
/// the answer each have this limit, so a probe ends at most twice this after it started.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// A client in its namespace that starts a new TCP connection to `vip` every `every` (each in
/// its own thread, so a connection stuck on a dead server does not delay the next one), asks
/// it who it is, and records the answer; bounded by `max` in time. A probe that gets no answer
/// within [`PROBE_TIMEOUT`] (or the given timeout) counts as failed.
pub struct Prober {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
    pub start: Instant,
}

impl Prober {
    pub fn start(client: &Netns, vip: IpAddr, every: Duration, max: Duration) -> Prober {
        Prober::start_from(client, None, vip, every, max)
    }

    /// Like [`Prober::start`], every connection from the source address `src` when given
    /// (so that the client's source-based routing picks the gateway).
    pub fn start_from(
        client: &Netns,
        src: Option<IpAddr>,
        vip: IpAddr,
        every: Duration,
        max: Duration,
    ) -> Prober {
        Prober::start_with_timeout(client, src, vip, every, max, PROBE_TIMEOUT)
    }

    /// Like [`Prober::start_from`], with each probe's own time limit (for the connect, then
    /// again for the answer):
    /// a limit over 1 s lets the client's kernel retransmit an unanswered SYN, as a real
    /// client's connect would.
    pub fn start_with_timeout(
        client: &Netns,
        src: Option<IpAddr>,
        vip: IpAddr,
        every: Duration,
        max: Duration,
        timeout: Duration,
    ) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let start = Instant::now();
        let thread = {
            let (stop, samples, name) = (stop.clone(), samples.clone(), client.name.clone());
            std::thread::spawn(move || {
                let ns = Netns { name };
                let _in = ns.enter();
                std::mem::forget(ns);
                // Threads spawned from here inherit this thread's network namespace.
                let mut running: Vec<JoinHandle<()>> = Vec::new();
                let mut n: u32 = 0;
                while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
                    let at = start.elapsed();
                    let samples = samples.clone();
                    running.push(std::thread::spawn(move || {
                        let answer = Conn::try_open_from(src, vip, timeout)
                            .ok()
                            .and_then(|mut c| c.try_ask().ok());
                        let done = start.elapsed();
                        samples.lock().unwrap().push(Sample { at, answer, done });
                    }));
                    running.retain(|t| !t.is_finished());
                    n += 1;
                    let next = every * n;
                    if let Some(wait) = next.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                for t in running {
                    let _ = t.join();
                }
            })
        };
        Prober {
            stop,
            samples,
            thread: Some(thread),
            start,
        }
    }

    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// The samples so far, in the order the probes started.
    pub fn samples(&self) -> Vec<Sample> {
        let mut v = self.samples.lock().unwrap().clone();
        v.sort_by_key(|s| s.at);
        v
    }

    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.samples()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a client saw between `from` and `to` (see [`gap`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The longest interruption: from one successful probe's start to the next one's, or to
    /// `to` for an interruption that had not ended by then.
    pub longest: Duration,
    /// Failed probes that count in the window ([`failed_in`]).
    pub failed: usize,
    /// An interruption was still open at `to` (probes failed after the last success): it
    /// counts until `to`, and the client was not served again within the window.
    pub open: bool,
}

impl Gap {
    /// The interruption in ms, or the reason it is no figure: an outage still open at the end
    /// of the window is the whole window, and that repetition failed.
    pub fn closed_ms(&self) -> Result<f64, String> {
        if self.open {
            Err(format!(
                "the client was not served again by the end of the window (longest interruption {self}, {} failed probes)",
                self.failed
            ))
        } else {
            Ok(self.longest.as_secs_f64() * 1000.0)
        }
    }
}

impl std::fmt::Display for Gap {
    /// "70 ms", or "at least 310 ms (not over at the end of the window)".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.longest.as_secs_f64() * 1000.0;
        if self.open {
            write!(f, "at least {ms:.0} ms (not over at the end of the window)")
        } else {
            write!(f, "{ms:.0} ms")
        }
    }
}

/// Between `from` and `to`: the longest time from one successful probe to the next (the
/// interruption a client saw) and the failed probes. The interruption around `from` starts at
/// the last success before `from` (or at `from` when there is none); one that has not ended by
/// `to` lasts until `to` and is marked open: nothing answered after the fault is never "no gap".
/// Failed probes: [`failed_in`]. `samples` must be sorted by start time (as [`Prober::samples`] returns them).
pub fn gap(samples: &[Sample], from: Duration, to: Duration) -> Gap {
    let mut last_ok: Option<Duration> = samples
        .iter()
        .filter(|s| s.at < from && s.answer.is_some())
        .map(|s| s.at)
        .next_back();
    let mut longest = Duration::ZERO;
    let mut last_in_window: Option<Duration> = None;
    for s in samples.iter().filter(|s| s.at >= from && s.at < to) {
        if s.answer.is_some() {
            longest = longest.max(s.at.saturating_sub(last_ok.unwrap_or(from)));
            last_ok = Some(s.at);
            last_in_window = Some(s.at);
        }
    }
    let failed = failed_in(samples, from, to).count();
    // Open: probes that failed before `to` after the window's last success, or nothing in the
    // window answered at all (also an empty window: no answer is never "no gap"). A probe still
    // in flight at `to` that failed later says nothing about the window (it may have failed
    // because of what happened after `to`, e.g. the next fault of a lab).
    let open = match last_in_window {
        Some(t) => samples
            .iter()
            .any(|s| s.at > t && s.at < to && s.done <= to && s.answer.is_none()),
        None => true,
    };
    if open {
        longest = longest.max(to.saturating_sub(last_ok.unwrap_or(from)));
    }
    Gap {
        longest,
        failed,
        open,
    }
}

/// The failed probes that count in the window [from, to): those in flight at `from` that
/// failed, and those started in the window that failed by `to`. A failed probe belongs to the
/// window in which it was in flight at a boundary the latest: one started just before `to`
/// that failed after `to` failed because of what happened at `to` (the next fault of a lab: a
/// SYN sent 1 ms before a link goes down times out), and counts in the next window. Probes in
/// flight at the end of the last samples count in the window they started in.
pub fn failed_in(
    samples: &[Sample],
    from: Duration,
    to: Duration,
) -> impl Iterator<Item = &Sample> {
    let after_to = samples.iter().any(|s| s.at >= to);
    samples.iter().filter(move |s| {
        let started_here = s.at >= from && s.at < to && (s.done <= to || !after_to);
        let in_flight_at_from = s.at < from && s.done > from;
        s.answer.is_none() && (started_here || in_flight_at_from)
    })
}

/// How many probes in [from, to) each server answered.
pub fn answered_by(samples: &[Sample], from: Duration, to: Duration, who: &str) -> usize {
    samples
        .iter()
        .filter(|s| s.at >= from && s.at < to && s.answer.as_deref() == Some(who))
        .count()
}

impl Ftn {
    /// Starts `ftn run` and waits, at most `within`, until its API accepts a TCP connection on
    /// 127.0.0.1:7480 in the gateway's namespace (the API starts once the controller has
    /// committed its first plan and written the dataplane). Lighter than [`Ftn::start`]'s
    /// `status` poll for huge configurations, and returns an error (with the log) instead of
    /// panicking. Ok: the time from the spawn to the first accepted connection.
    pub fn start_within(&mut self, within: Duration) -> Result<Duration, String> {
        self.start_within_on(within, std::net::SocketAddr::from(([127, 0, 0, 1], 7480)))
    }

    /// [`Ftn::start_within`] for a configuration whose API listens on `api`.
    pub fn start_within_on(
        &mut self,
        within: Duration,
        api: std::net::SocketAddr,
    ) -> Result<Duration, String> {
        if self.child.is_some() {
            return Err("ftn is already running".into());
        }
        self.runs += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let _ = writeln!(&log, "==== ftn run #{} ====", self.runs);
        let err_log = log.try_clone().map_err(|e| e.to_string())?;
        let t = Instant::now();
        let child = self
            .in_gateway()
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| format!("spawn ftn run: {e}"))?;
        self.child = Some(child);
        // A handle on the gateway's namespace that never deletes it (it belongs to the caller),
        // even if something below panics.
        let ns = std::mem::ManuallyDrop::new(Netns {
            name: self.ns.clone(),
        });
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "ftn run exited early ({st}); its log:\n{}",
                    self.log_text()
                ));
            }
            let up = crate::lab::try_in_ns(&ns, move || {
                std::net::TcpStream::connect_timeout(&api, Duration::from_millis(200)).is_ok()
            })
            .unwrap_or(false);
            if up {
                return Ok(t.elapsed());
            }
            if t.elapsed() > within {
                self.kill9();
                return Err(format!(
                    "ftn run did not answer within {within:?}; its log (tail):\n{}",
                    tail(&self.log_text(), 40)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod gap_tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Probes every 10 ms from 0 to `until`; `ok(at)` says which answered.
    fn probes(until: u64, ok: impl Fn(u64) -> bool) -> Vec<Sample> {
        (0..until)
            .step_by(10)
            .map(|t| Sample {
                at: ms(t),
                answer: ok(t).then(|| "s".to_string()),
                done: ms(t) + Duration::from_micros(100),
            })
            .collect()
    }

    #[test]
    fn a_closed_interruption_is_measured_between_successes() {
        // Fault at 100; probes 100..=150 fail; 160 answers.
        let s = probes(400, |t| !(100..=150).contains(&t));
        let g = gap(&s, ms(100), ms(400));
        assert_eq!(
            g,
            Gap {
                longest: ms(70),
                failed: 6,
                open: false
            }
        );
        assert_eq!(g.closed_ms(), Ok(70.0));
    }

    #[test]
    fn nothing_answered_after_the_fault_is_the_whole_window() {
        let s = probes(400, |t| t < 100);
        let g = gap(&s, ms(100), ms(400));
        // From the last success (90) to the window's end.
        assert_eq!(
            g,
            Gap {
                longest: ms(310),
                failed: 30,
                open: true
            }
        );
        assert!(g.closed_ms().is_err(), "an open outage is no figure: {g:?}");
    }

    #[test]
    fn an_outage_still_open_at_the_end_counts_to_the_end() {
        // Recovered once (100..=150 failed), then failed again from 300 to the end.
        let s = probes(400, |t| !(100..=150).contains(&t) && t < 300);
        let g = gap(&s, ms(100), ms(400));
        assert_eq!(g.longest, ms(110), "290 (last success) to 400: {g:?}");
        assert!(g.open);
        assert_eq!(g.failed, 16);
    }

    #[test]
    fn a_failure_at_the_end_leaves_the_window_open() {
        // The longest interruption (90 to 260) ended, but the last probe failed: the client was
        // not served at the end of the window, which is no figure.
        let s = probes(400, |t| !(100..=250).contains(&t) && t != 390);
        let g = gap(&s, ms(100), ms(400));
        assert_eq!(
            g,
            Gap {
                longest: ms(170),
                failed: 17,
                open: true
            }
        );
        assert!(g.closed_ms().is_err());
    }

    #[test]
    fn no_success_before_the_window_starts_the_interruption_at_the_window() {
        let s = probes(400, |t| t >= 200);
        let g = gap(&s, ms(100), ms(400));
        assert_eq!(
            g,
            Gap {
                longest: ms(100),
                failed: 10,
                open: false
            }
        );
    }

    #[test]
    fn a_probe_in_flight_at_the_end_that_fails_later_does_not_open_the_window() {
        // The next fault (at 300) breaks the probe started at 290 before it ends.
        let mut s = probes(400, |t| !(100..=150).contains(&t) && t < 290);
        s[29].done = ms(490);
        let g = gap(&s, ms(100), ms(300));
        assert_eq!(
            g,
            Gap {
                longest: ms(70),
                failed: 6,
                open: false
            }
        );
        // It counts in the next window (the fault's), with the 10 started there.
        assert_eq!(gap(&s, ms(300), ms(400)).failed, 11);
        // The same failure, ended within the window, does.
        s[29].done = ms(295);
        assert!(gap(&s, ms(100), ms(300)).open);
    }

    #[test]
    fn an_empty_window_is_open() {
        let s = probes(100, |_| true);
        let g = gap(&s, ms(200), ms(400));
        assert_eq!(
            g,
            Gap {
                longest: ms(310),
                failed: 0,
                open: true
            },
            "from the last success (90)"
        );
        assert!(g.closed_ms().is_err());
    }

    #[test]
    fn a_failure_at_the_window_start_without_earlier_success_is_counted() {
        // Nothing answered before the window; the probe at `from` failed, then all answered.
        let s = probes(400, |t| t > 100);
        let g = gap(&s, ms(100), ms(400));
        assert_eq!(
            g,
            Gap {
                longest: ms(10),
                failed: 1,
                open: false
            }
        );
        // Only the probe at `from`, which failed: open, the whole window.
        let s = probes(110, |t| t >= 200);
        let g = gap(&s, ms(100), ms(400));
        assert_eq!(
            g,
            Gap {
                longest: ms(300),
                failed: 1,
                open: true
            }
        );
    }

    #[test]
    fn no_fault_is_about_one_probe_period() {
        let s = probes(400, |_| true);
        let g = gap(&s, ms(100), ms(400));
        assert_eq!(
            g,
            Gap {
                longest: ms(10),
                failed: 0,
                open: false
            }
        );
    }
}
