//! `cargo xtask fresh-root`: proves that the README's two commands work on a fresh machine.
//!
//! A "fresh Debian 12 machine with rustup" is modelled as a chroot:
//!
//! 1. **base** (cached in `--cache`, default `/var/cache/ftn-fresh-root`): `debootstrap
//!    --variant=minbase` of bookworm plus exactly what rustup itself needs (curl,
//!    ca-certificates, a C linker: gcc + libc6-dev) and git. It is built under a temporary name
//!    and renamed when complete, so a half-built base is never reused.
//! 2. **prepare**: each run copies the base into its own work dir
//!    (`/var/tmp/ftn-fresh-root.<pid>`), so every run starts from the pristine base; injects the
//!    host's CA bundle (HTTPS goes through a proxy only the host trusts), `resolv.conf` and
//!    `hosts`; empties apt's package lists (the project's set-up must run `apt-get update`
//!    itself); gives the root the host's rustup toolchains through an overlay (writes stay in the
//!    run's dir) and an empty cargo home with only the rustup proxies — no bpf-linker, no
//!    registry, no crates, no protoc; and clones the commit under test into `/src/ftn`
//!    (uncommitted changes are not included).
//! 3. **phases**, each in its own private mount namespace (`unshare --mount --propagation
//!    private`), so its mounts (`/proc`, `/sys`, a fresh bpffs, `/dev`, `/run`, the rustup
//!    overlay) vanish with it even if xtask is killed:
//!    - `plain`: `cargo build` + `cargo clippy` of the host crates with no bpf-linker and no
//!      protoc on the machine, then `ftn run` must refuse with "embeds no XDP program";
//!    - `demo`: `cargo xtask demo`;
//!    - `test`: `cargo xtask test`;
//!    - `check` (not in the default set): a quick probe of the root itself (toolchains, HTTPS,
//!      network namespaces, bpffs) for debugging this task.
//!
//! The work dir is removed at the end, also on failure or panic (a [`WorkDir`] guard that first
//! makes sure nothing is mounted under it), unless `--keep`; one left by a run that was killed
//! outright is removed by the next run. Timings are printed and appended to
//! `<cache>/fresh-root.log`.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{apt_install, have, is_root, step, Cmd};

/// The Debian mirror (plain http: reachable without the HTTPS proxy).
const MIRROR: &str = "http://deb.debian.org/debian";
/// What a fresh Debian 12 machine with rustup has beyond minbase: rustup's own prerequisites
/// (curl to fetch rustup-init, ca-certificates, a C linker for rustc: gcc + libc6-dev) and git.
const BASE_PACKAGES: &str = "ca-certificates,gcc,libc6-dev,git,curl";
/// Where a phase's scripts and files live inside the root.
const IN_ROOT_DIR: &str = "/fresh-root";
/// The proxies rustup-init creates next to `rustup` in `~/.cargo/bin`.
const RUSTUP_PROXIES: &[&str] = &[
    "cargo",
    "rustc",
    "rustdoc",
    "cargo-clippy",
    "clippy-driver",
    "rustfmt",
    "cargo-fmt",
];
/// Proxy variables passed into the root when the host has them.
const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
];

/// What `cargo xtask fresh-root` was asked to do.
pub(crate) struct Options {
    /// Holds the cached base and the log.
    pub(crate) cache: PathBuf,
    /// The commit under test (anything `git rev-parse` takes).
    pub(crate) rev: String,
    /// Comma-separated phases.
    pub(crate) only: String,
    /// Keep the run's work dir.
    pub(crate) keep: bool,
}

/// A step of the run inside the root, in the order they run.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Check,
    Plain,
    Demo,
    Test,
    Deb,
}

/// The package phase: `cargo xtask deb` (it checks the package it built), then the package
/// installed into this clean root: the example configuration is accepted there, the state
/// directory and the API token exist (that its scripts start nothing is checked by `deb`).
const DEB_SCRIPT: &str = "cargo xtask deb
dpkg -i target/debian/ftn_*_amd64.deb
test -d /var/lib/ftn
test -s /etc/ftn/token
/usr/bin/ftn check-config /etc/ftn/ftn.toml
/usr/bin/ftn --version
test -f /usr/share/man/man1/ftn-run.1.gz
test -f /usr/share/bash-completion/completions/ftn
dpkg -r ftn
test -f /etc/ftn/ftn.toml
echo 'deb: installed, checked and removed (the conffile stays until purge)'
";

impl Phase {
    const ALL: [Phase; 5] = [
        Phase::Check,
        Phase::Plain,
        Phase::Demo,
        Phase::Test,
        Phase::Deb,
    ];

    fn name(self) -> &'static str {
        match self {
            Phase::Check => "check",
            Phase::Plain => "plain",
            Phase::Demo => "demo",
            Phase::Test => "test",
            Phase::Deb => "deb",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Phase::Check => "check",
            Phase::Plain => "plain build",
            Phase::Demo => "demo",
            Phase::Test => "test",
            Phase::Deb => "package install",
        }
    }

    /// The shell script the phase runs in the root (after [`SCRIPT_PRELUDE`]).
    fn script(self) -> String {
        match self {
            Phase::Check => CHECK_SCRIPT.to_string(),
            Phase::Plain => PLAIN_SCRIPT.replace("@CONFIG@", &format!("{IN_ROOT_DIR}/stub.toml")),
            Phase::Demo => "cargo xtask demo\n".to_string(),
            Phase::Test => "cargo xtask test\n".to_string(),
            Phase::Deb => DEB_SCRIPT.to_string(),
        }
    }
}

fn parse_phases(only: &str) -> Result<Vec<Phase>> {
    let mut phases = BTreeSet::new();
    for name in only.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let phase = Phase::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                anyhow!("--only: unknown phase {name:?} (plain, demo, test, deb, check)")
            })?;
        phases.insert(phase);
    }
    if phases.is_empty() {
        bail!("--only: no phase given (plain, demo, test, check)");
    }
    Ok(phases.into_iter().collect())
}

/// Every phase script starts with this (run by the root's `/bin/sh`).
const SCRIPT_PRELUDE: &str = r#"set -eu
# Fails the phase when a tool that a fresh machine lacks is found. (`! command -v X` would not:
# `set -e` ignores negated commands.)
absent() {
    if command -v "$1" >/dev/null 2>&1; then
        echo "fresh-root: $1 is on this machine ($(command -v "$1")), a fresh one has none" >&2
        exit 1
    fi
    echo "fresh-root: $1: absent, as on a fresh machine"
}
cd /src/ftn
"#;

/// A quick look at the root: toolchains, HTTPS through the proxy, namespaces, bpffs.
const CHECK_SCRIPT: &str = r#"absent protoc
absent bpf-linker
cargo --version
rustc --version
rustc +nightly -vV
rustup toolchain list
curl -fsS -o /dev/null https://index.crates.io/config.json && echo "fresh-root: HTTPS to crates.io: ok"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 >/dev/null
ip netns add fresh-root-check
ip netns exec fresh-root-check ip link set lo up
ip netns del fresh-root-check
mount | grep bpf
"#;

/// The host crates build with neither bpf-linker nor protoc, and the binary says why it cannot
/// load XDP.
const PLAIN_SCRIPT: &str = r#"absent protoc
absent bpf-linker
cargo build --locked --workspace --exclude ftn-ebpf
cargo clippy --locked --workspace --exclude ftn-ebpf --all-targets -- -D warnings
target/debug/ftn check-config @CONFIG@
if out=$(timeout 60 target/debug/ftn run --config @CONFIG@ 2>&1); then
    echo "fresh-root: \`ftn run\` built without bpf-linker ran instead of refusing: $out" >&2
    exit 1
fi
case "$out" in
    *"embeds no XDP program"*) echo "fresh-root: \`ftn run\` refuses as it should: $out" ;;
    *) echo "fresh-root: \`ftn run\` failed, but not with \"embeds no XDP program\": $out" >&2; exit 1 ;;
esac
"#;

/// A minimal valid configuration for the stub binary (no token file, directory in /tmp).
const STUB_CONFIG: &str = r#"# fresh-root: the smallest valid configuration; `ftn run` must refuse it for want of XDP.
[gateway]
interfaces = ["lo"]
pin_dir = "/sys/fs/bpf/ftn-fresh-root"

[directory]
path = "/tmp/ftn-fresh-root-directory"

[[server]]
name = "a"
address = "198.18.2.10"

[[resource]]
name = "r"
vip = "198.18.100.1"
protocol = "tcp"
ports = [80]
servers = ["a"]
"#;

/// How one line of the timing table ended.
enum Outcome {
    Passed(Duration),
    Failed(Duration),
    NotRun,
}

impl Outcome {
    fn of(ok: bool, took: Duration) -> Outcome {
        if ok {
            Outcome::Passed(took)
        } else {
            Outcome::Failed(took)
        }
    }
}

/// The timing table, printed at the end and appended to the log.
#[derive(Default)]
struct Report {
    rows: Vec<String>,
}

impl Report {
    fn row(&mut self, what: &str, outcome: &Outcome) {
        let (verdict, time) = match outcome {
            Outcome::Passed(d) => ("passed", secs(*d)),
            Outcome::Failed(d) => ("FAILED", secs(*d)),
            Outcome::NotRun => ("not run", String::new()),
        };
        self.note(what, verdict, &time);
    }

    fn note(&mut self, what: &str, verdict: &str, text: &str) {
        self.rows.push(
            format!("fresh-root: {what:<12} {verdict:<8} {text}")
                .trim_end()
                .to_string(),
        );
    }

    fn table(&self) -> String {
        let mut s = String::new();
        for row in &self.rows {
            let _ = writeln!(s, "{row}");
        }
        s
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{s} s ({}m{:02}s)", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

/// `cargo xtask fresh-root`.
pub(crate) fn run(workspace: &Path, opts: Options) -> Result<()> {
    if !is_root() {
        bail!("fresh-root builds a Debian root and mounts inside it: run `cargo xtask fresh-root` as root");
    }
    let phases = parse_phases(&opts.only)?;
    let total = Instant::now();
    let commit = resolve_commit(workspace, &opts.rev)?;
    fs::create_dir_all(&opts.cache)
        .with_context(|| format!("creating the cache dir {}", opts.cache.display()))?;
    let log = opts.cache.join("fresh-root.log");
    let mut report = Report::default();

    ensure_debootstrap()?;
    let base = ensure_base(&opts.cache)?;
    match &base.built {
        Some(d) => report.row("debootstrap", &Outcome::Passed(*d)),
        None => report.note("debootstrap", "cached", &format!("({})", base.origin)),
    }

    let netns_before = host_netns()?;
    clean_stale_work_dirs()?;
    let started = Instant::now();
    let work = WorkDir::create(opts.keep)?;
    let prepared = prepare(&work, &base.path, workspace, &commit);
    let took = started.elapsed();
    report.row("prepare", &Outcome::of(prepared.is_ok(), took));
    phase_line(&log, &format!("prepare: {} s", took.as_secs()));
    let failure = match prepared {
        Ok(()) => run_phases(&work, &phases, &commit, &log, &mut report),
        Err(e) => {
            for phase in &phases {
                report.row(phase.title(), &Outcome::NotRun);
            }
            Some(e.context("fresh-root: prepare failed"))
        }
    };
    report.row("total", &Outcome::of(failure.is_none(), total.elapsed()));

    // Clean up before the summary, so that a failed clean-up shows there too.
    drop(work);
    report_new_netns(&netns_before);
    let table = report.table();
    eprintln!("fresh-root: commit {commit}\n{table}");
    append_log(&log, &commit, &table);
    match failure {
        Some(e) => Err(e),
        None => {
            step(&format!(
                "fresh-root: every phase passed on a fresh root (commit {commit}; log {})",
                log.display()
            ));
            Ok(())
        }
    }
}

/// Runs the chosen phases in order, up to the first that fails (whose error it returns).
fn run_phases(
    work: &WorkDir,
    phases: &[Phase],
    commit: &str,
    log: &Path,
    report: &mut Report,
) -> Option<anyhow::Error> {
    let mut failure = None;
    for phase in Phase::ALL {
        if !phases.contains(&phase) {
            if phase != Phase::Check {
                report.note(phase.title(), "skipped", "(--only)");
            }
        } else if failure.is_some() {
            report.row(phase.title(), &Outcome::NotRun);
        } else {
            let started = Instant::now();
            let result = run_phase(work, phase);
            let took = started.elapsed();
            phase_line(
                log,
                &format!("phase {}: {} s", phase.title(), took.as_secs()),
            );
            report.row(phase.title(), &Outcome::of(result.is_ok(), took));
            failure = result.err().map(|e| {
                e.context(format!(
                    "fresh-root: phase \"{}\" failed (commit {commit})",
                    phase.title()
                ))
            });
        }
    }
    failure
}

/// The commit under test; says that uncommitted changes are left out.
fn resolve_commit(workspace: &Path, rev: &str) -> Result<String> {
    let ws = workspace
        .to_str()
        .context("the workspace path is not UTF-8")?;
    let commit = Cmd::new(
        "git",
        &[
            "-C",
            ws,
            "rev-parse",
            "--verify",
            &format!("{rev}^{{commit}}"),
        ],
    )
    .output()
    .with_context(|| format!("--rev {rev}: not a commit of {ws}"))?
    .trim()
    .to_string();
    let dirty = Cmd::new(
        "git",
        &["-C", ws, "status", "--porcelain", "--untracked-files=no"],
    )
    .output()?
    .lines()
    .count();
    step(&format!("fresh-root: testing commit {commit} ({rev}); only committed files are cloned into the root"));
    if dirty > 0 {
        step(&format!(
            "fresh-root: NOTE: {dirty} file(s) with uncommitted changes in {ws} are NOT included"
        ));
    }
    Ok(commit)
}

/// Prints a `fresh-root: ` line and appends it to the log.
fn phase_line(log: &Path, line: &str) {
    eprintln!("fresh-root: {line}");
    append(log, &format!("fresh-root: {line}\n"));
}

fn append_log(log: &Path, commit: &str, table: &str) {
    let date = Cmd::new("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap_or_default();
    append(
        log,
        &format!(
            "fresh-root: summary, {} commit {commit}\n{table}\n",
            date.trim()
        ),
    );
}

fn append(log: &Path, text: &str) {
    let written = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        eprintln!(
            "fresh-root: WARNING: cannot append to {}: {e}",
            log.display()
        );
    }
}

// ---- the cached base ---------------------------------------------------------------------------

fn ensure_debootstrap() -> Result<()> {
    if have("debootstrap") {
        step("fresh-root: debootstrap: present");
        return Ok(());
    }
    step("fresh-root: debootstrap: missing, installing with apt-get");
    apt_install(&["debootstrap"])
}

/// The cached base root.
struct Base {
    path: PathBuf,
    /// How long debootstrap took, when this run built it.
    built: Option<Duration>,
    /// For a cached base: when it was built and how long that took.
    origin: String,
}

/// Written into the base when complete: the command that built it, then when and how long.
const BASE_STAMP: &str = "etc/ftn-fresh-root-base";

fn debootstrap_args(target: &str) -> Vec<String> {
    [
        "--variant=minbase",
        &format!("--include={BASE_PACKAGES}"),
        "bookworm",
        target,
        MIRROR,
    ]
    .map(String::from)
    .to_vec()
}

/// Returns the cached base, building it first when it is missing or was built differently.
fn ensure_base(cache: &Path) -> Result<Base> {
    let path = cache.join("base");
    let wanted = format!("debootstrap {}", debootstrap_args("DIR").join(" "));
    if let Ok(stamp) = fs::read_to_string(path.join(BASE_STAMP)) {
        let mut lines = stamp.lines();
        if lines.next() == Some(wanted.as_str()) {
            let origin = lines.next().unwrap_or("built earlier").to_string();
            step(&format!(
                "fresh-root: using the cached base {} ({origin})",
                path.display()
            ));
            return Ok(Base {
                path,
                built: None,
                origin,
            });
        }
        step(&format!(
            "fresh-root: the cached base {} was built differently: rebuilding it",
            path.display()
        ));
        remove_tree(&path)?;
    } else if path.exists() {
        step(&format!(
            "fresh-root: {} has no completion stamp: rebuilding it",
            path.display()
        ));
        remove_tree(&path)?;
    }

    let partial = cache.join("base.partial");
    if partial.exists() {
        step(&format!(
            "fresh-root: removing a half-built base {}",
            partial.display()
        ));
        remove_tree(&partial)?;
    }
    let target = partial.to_str().context("the cache path is not UTF-8")?;
    let args = debootstrap_args(target);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    step("fresh-root: building the base root with debootstrap (a few minutes, once)");
    let started = Instant::now();
    Cmd::new("debootstrap", &args)
        .run()
        .context("debootstrap of the base root (is deb.debian.org reachable?)")?;
    let took = started.elapsed();
    // debootstrap mounts /proc and /sys in its target while it works: nothing may stay mounted.
    let left = mounts_under(&partial)?;
    if !left.is_empty() {
        bail!(
            "debootstrap left mounts under {}: {}",
            partial.display(),
            left.join(", ")
        );
    }
    let date = Cmd::new("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).output()?;
    let origin = format!(
        "built {}, debootstrap took {} s",
        date.trim(),
        took.as_secs()
    );
    let stamp = partial.join(BASE_STAMP);
    fs::write(&stamp, format!("{wanted}\n{origin}\n"))
        .with_context(|| format!("writing {}", stamp.display()))?;
    fs::rename(&partial, &path)
        .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
    step(&format!(
        "fresh-root: base root ready in {} ({origin})",
        path.display()
    ));
    Ok(Base {
        path,
        built: Some(took),
        origin,
    })
}

// ---- the run's work dir ------------------------------------------------------------------------

const WORK_PREFIX: &str = "/var/tmp/ftn-fresh-root.";

/// The run's work dir: `root/` (the copy of the base) and the rustup overlay's upper and work
/// dirs. Removed on drop (also when a phase fails or xtask panics), unless kept.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn create(keep: bool) -> Result<WorkDir> {
        let path = PathBuf::from(format!("{WORK_PREFIX}{}", std::process::id()));
        if path.exists() {
            remove_tree(&path)?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir { path, keep })
    }

    fn root(&self) -> PathBuf {
        self.path.join("root")
    }

    /// The root's path as a shell word.
    fn root_str(&self) -> Result<String> {
        path_str(&self.root())
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            step(&format!(
                "fresh-root: --keep: the work dir stays in {}; enter the root with \
                 `unshare --mount --propagation private -- sh {}/enter.sh` (its mounts vanish when \
                 the shell exits); remove it with `rm -rf --one-file-system {}`",
                self.path.display(),
                self.path.display(),
                self.path.display()
            ));
            return;
        }
        match remove_tree(&self.path) {
            Ok(()) => step(&format!(
                "fresh-root: removed the work dir {}",
                self.path.display()
            )),
            Err(e) => eprintln!(
                "fresh-root: WARNING: the work dir {} is left behind: {e:#}",
                self.path.display()
            ),
        }
    }
}

/// Work dirs of earlier runs whose xtask is gone (killed before its clean-up).
fn clean_stale_work_dirs() -> Result<()> {
    let dir = Path::new(WORK_PREFIX)
        .parent()
        .context("WORK_PREFIX has a parent")?;
    let prefix = Path::new(WORK_PREFIX)
        .file_name()
        .and_then(|n| n.to_str())
        .context("WORK_PREFIX has a file name")?;
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            step(&format!(
                "fresh-root: removing the work dir of an earlier run (pid {pid} is gone): {}",
                entry.path().display()
            ));
            remove_tree(&entry.path())?;
        }
    }
    Ok(())
}

/// Mount points at or under `dir` in this (the host's) mount namespace, deepest first.
fn mounts_under(dir: &Path) -> Result<Vec<String>> {
    let dir = path_str(dir)?;
    let info =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut found: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| m == &dir || m.starts_with(&format!("{dir}/")))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    found.dedup();
    Ok(found)
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `rm -rf` of a work dir or base, made safe: anything still mounted under it is unmounted
/// first (lazily), and it refuses while a mount remains or while one of the root's
/// `/dev`, `/proc`, `/sys` or `/root/.rustup` is the host's own directory (a live bind).
/// `--one-file-system` is a last guard: rm does not descend into another file system.
fn remove_tree(dir: &Path) -> Result<()> {
    for m in mounts_under(dir)? {
        step(&format!("fresh-root: {m} is still mounted: unmounting it"));
        Cmd::new("umount", &["-l", &m]).run()?;
    }
    let left = mounts_under(dir)?;
    if !left.is_empty() {
        bail!(
            "not removing {}: still mounted under it: {}",
            dir.display(),
            left.join(", ")
        );
    }
    let top = fs::symlink_metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
    let host = [
        ("dev", PathBuf::from("/dev")),
        ("proc", PathBuf::from("/proc")),
        ("sys", PathBuf::from("/sys")),
        ("root/.rustup", host_rustup_home()),
    ];
    for root in [dir.to_path_buf(), dir.join("root")] {
        for (sub, host_dir) in &host {
            let inside = root.join(sub);
            let (Ok(a), Ok(b)) = (fs::symlink_metadata(&inside), fs::metadata(host_dir)) else {
                continue;
            };
            if (a.dev(), a.ino()) == (b.dev(), b.ino()) || a.dev() != top.dev() {
                bail!(
                    "not removing {}: {} is the host's {} or another file system",
                    dir.display(),
                    inside.display(),
                    host_dir.display()
                );
            }
        }
    }
    Cmd::new("rm", &["-rf", "--one-file-system", &path_str(dir)?]).run()
}

fn host_rustup_home() -> PathBuf {
    std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".rustup")
        })
}

fn path_str(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", p.display()))?;
    if s.contains(['\'', '\n']) {
        bail!("{s}: a path with a quote or a newline cannot go into the scripts");
    }
    Ok(s.to_string())
}

// ---- prepare -----------------------------------------------------------------------------------

/// Everything between the cached base and the first phase.
fn prepare(work: &WorkDir, base: &Path, workspace: &Path, commit: &str) -> Result<()> {
    step(&format!(
        "fresh-root: preparing the run's root in {}",
        work.root().display()
    ));
    copy_base(base, &work.root())?;
    inject_host_files(&work.root())?;
    configure_apt(&work.root())?;
    make_cargo_home(&work.root())?;
    clone_source(workspace, &work.root(), commit)?;
    write_phase_files(work)?;
    write_enter_script(work)
}

/// A full copy, not an overlay on the cached base: each run's root is independent of the cache
/// (which may be rebuilt meanwhile), host-side preparation is plain file operations (no
/// whiteouts to empty apt's lists), and nothing but the phases' namespaces needs mounting.
/// It costs a few seconds (reflinks where the file system has them).
fn copy_base(base: &Path, root: &Path) -> Result<()> {
    Cmd::new(
        "cp",
        &["-a", "--reflink=auto", &path_str(base)?, &path_str(root)?],
    )
    .run()
}

/// HTTPS in the root goes through the same proxy as the host's, whose CA only the host's bundle
/// has; name resolution as on the host.
fn inject_host_files(root: &Path) -> Result<()> {
    let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    // In the local CA dir, so that an `update-ca-certificates` (run by any apt install that
    // touches ca-certificates) keeps it in the bundle it regenerates.
    replace_file(
        bundle,
        &root.join("usr/local/share/ca-certificates/host-bundle.crt"),
    )?;
    replace_file(bundle, &root.join("etc/ssl/certs/ca-certificates.crt"))?;
    replace_file(Path::new("/etc/resolv.conf"), &root.join("etc/resolv.conf"))?;
    replace_file(Path::new("/etc/hosts"), &root.join("etc/hosts"))
}

/// Copies `from`'s content to `to`, replacing `to` even when it is a symlink (which would
/// otherwise be written through, e.g. into the root's /run).
fn replace_file(from: &Path, to: &Path) -> Result<()> {
    if fs::symlink_metadata(to).is_ok() {
        fs::remove_file(to).with_context(|| format!("removing {}", to.display()))?;
    }
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// bookworm (with updates and security) from deb.debian.org only, and no package lists: the
/// project's set-up has to run `apt-get update` itself, as on a machine whose lists are gone.
fn configure_apt(root: &Path) -> Result<()> {
    let apt = root.join("etc/apt");
    write(
        &apt.join("sources.list"),
        "deb http://deb.debian.org/debian bookworm main\n\
         deb http://deb.debian.org/debian bookworm-updates main\n\
         deb http://deb.debian.org/debian-security bookworm-security main\n",
    )?;
    empty_dir(&apt.join("sources.list.d"), &[])?;
    // Like the host's apt: the mirror's Release files may be older than their Valid-Until.
    write(
        &apt.join("apt.conf.d/99ftn-fresh-root"),
        "Acquire::Check-Valid-Until \"false\";\n",
    )?;
    empty_dir(&root.join("var/lib/apt/lists"), &["lock", "partial"])?;
    // apt's caches are built from the lists: without them it knows no package either.
    for cache in ["pkgcache.bin", "srcpkgcache.bin"] {
        let p = root.join("var/cache/apt").join(cache);
        if p.exists() {
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Removes every entry of `dir` but those named in `keep` (files only are expected).
fn empty_dir(dir: &Path, keep: &[&str]) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if keep.iter().any(|k| entry.file_name() == *k) {
            continue;
        }
        let p = entry.path();
        let removed = if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        removed.with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

/// What rustup-init leaves in `~/.cargo`: `bin/` with rustup and its proxies, nothing else.
/// The toolchains themselves come from the host through the overlay on `/root/.rustup`.
fn make_cargo_home(root: &Path) -> Result<()> {
    let rustup = find_in_path("rustup")?;
    let rustup =
        fs::canonicalize(&rustup).with_context(|| format!("resolving {}", rustup.display()))?;
    let bin = root.join("root/.cargo/bin");
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    let target = bin.join("rustup");
    fs::copy(&rustup, &target)
        .with_context(|| format!("copying {} to {}", rustup.display(), target.display()))?;
    for proxy in RUSTUP_PROXIES {
        let link = bin.join(proxy);
        fs::hard_link(&target, &link)
            .with_context(|| format!("linking {} to {}", link.display(), target.display()))?;
    }
    let mount_point = root.join("root/.rustup");
    fs::create_dir_all(&mount_point).with_context(|| format!("creating {}", mount_point.display()))
}

fn find_in_path(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{program} is not on this host's PATH: fresh-root lends the host's rustup to the root"))
}

/// The commit under test in the root's /src/ftn (committed files only).
fn clone_source(workspace: &Path, root: &Path, commit: &str) -> Result<()> {
    let dest = path_str(&root.join("src/ftn"))?;
    Cmd::new(
        "git",
        &[
            "clone",
            "--quiet",
            "--no-hardlinks",
            &path_str(workspace)?,
            &dest,
        ],
    )
    .run()?;
    Cmd::new(
        "git",
        &["-C", &dest, "checkout", "--quiet", "--detach", commit],
    )
    .run()
}

/// Each phase's script and the stub configuration, under [`IN_ROOT_DIR`] in the root.
fn write_phase_files(work: &WorkDir) -> Result<()> {
    let dir = work.root().join(IN_ROOT_DIR.trim_start_matches('/'));
    for phase in Phase::ALL {
        write(
            &dir.join(format!("{}.sh", phase.name())),
            &format!("{SCRIPT_PRELUDE}{}", phase.script()),
        )?;
    }
    write(&dir.join("stub.toml"), STUB_CONFIG)
}

/// `enter.sh [SCRIPT]`, run in a new private mount namespace: mounts what the root needs, then
/// runs SCRIPT (or a shell) in it with the environment of a fresh machine.
fn write_enter_script(work: &WorkDir) -> Result<()> {
    let root = work.root_str()?;
    let lower = path_str(
        &fs::canonicalize(host_rustup_home()).context("resolving the host's RUSTUP_HOME")?,
    )?;
    let upper = path_str(&work.path.join("rustup-upper"))?;
    let overlay_work = path_str(&work.path.join("rustup-work"))?;
    for d in [&upper, &overlay_work] {
        fs::create_dir_all(d).with_context(|| format!("creating {d}"))?;
    }
    let mut env = vec![
        "PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            .to_string(),
        "HOME=/root".to_string(),
        "CARGO_HOME=/root/.cargo".to_string(),
        "RUSTUP_HOME=/root/.rustup".to_string(),
        "LANG=C.UTF-8".to_string(),
    ];
    for var in PROXY_VARS.iter().chain(&["CI"]) {
        if let Ok(v) = std::env::var(var) {
            if v.contains(['\'', '\n']) {
                bail!("{var} holds a quote or a newline: cannot pass it into the root");
            }
            env.push(format!("{var}={v}"));
        }
    }
    let env: Vec<String> = env.iter().map(|e| format!("'{e}'")).collect();
    let script = format!(
        r#"#!/bin/sh
# fresh-root: enter the run's root. Run it in a private mount namespace:
#   unshare --mount --propagation private -- sh {work}/enter.sh [SCRIPT]
# Every mount below belongs to that namespace and vanishes with it.
set -eu
R='{root}'
# The root must be a mount point: `ip netns exec` remounts / in the netns it enters.
mount --bind "$R" "$R"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
# A fresh BPF filesystem: the root's pins are its own.
mount -t bpf bpf "$R/sys/fs/bpf"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mkdir -p "$R/run/netns" "$R/run/lock"
# The host's toolchains; what the root's rustup writes goes to the run's upper dir.
mount -t overlay overlay -o 'lowerdir={lower},upperdir={upper},workdir={overlay_work},redirect_dir=on,index=off' "$R/root/.rustup"
exec chroot "$R" /usr/bin/env -i {env} /bin/sh "$@"
"#,
        work = work.path.display(),
        env = env.join(" "),
    );
    write(&work.path.join("enter.sh"), &script)
}

// ---- phases ------------------------------------------------------------------------------------

fn run_phase(work: &WorkDir, phase: Phase) -> Result<()> {
    step(&format!(
        "fresh-root: phase {} ({}.sh in the root)",
        phase.title(),
        phase.name()
    ));
    let enter = path_str(&work.path.join("enter.sh"))?;
    let script = format!("{IN_ROOT_DIR}/{}.sh", phase.name());
    Cmd::new(
        "unshare",
        &[
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            &enter,
            &script,
        ],
    )
    .run()
}

// ---- network namespaces ------------------------------------------------------------------------

fn host_netns() -> Result<BTreeSet<String>> {
    Ok(Cmd::new("ip", &["netns", "list"])
        .output()?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect())
}

/// Network namespaces the root's tests make live in the root's own /run (gone with the mount
/// namespace); one that shows up in the host's list was made during the run, by the run or by
/// someone else. Reported, never deleted.
fn report_new_netns(before: &BTreeSet<String>) {
    match host_netns() {
        Ok(after) => {
            let new: Vec<&String> = after.difference(before).collect();
            if new.is_empty() {
                step("fresh-root: no network namespace appeared on the host during the run");
            } else {
                step(&format!(
                    "fresh-root: network namespaces that appeared on the host during the run (not deleted; maybe another user's): {}",
                    new.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
                ));
            }
        }
        Err(e) => eprintln!("fresh-root: WARNING: cannot list network namespaces: {e:#}"),
    }
}
