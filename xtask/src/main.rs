//! `cargo xtask`: set-up, build, lint and test ftn.
//!
//! Every external command goes through [`Cmd`], which prints it and fails with the command line
//! in the message. `setup` is idempotent: it checks each requirement and installs only what is
//! missing, saying so.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Parser, Subcommand};

mod deb;
mod fresh_root;
mod layout;
mod soak;

/// bpf-linker release that loads the nightly toolchain's own libLLVM (so its LLVM always
/// matches the one rustc emits bitcode with).
const BPF_LINKER_VERSION: &str = "0.10.4";
/// Debian packages the tests and labs use, with the command that shows each is present.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("ethtool", "ethtool"),
    ("procps", "sysctl"),
    ("util-linux", "nsenter"),
    ("nftables", "nft"),
    // The shared directory's tests run a real etcd cluster.
    ("etcd-server", "etcd"),
    ("etcd-client", "etcdctl"),
    // The gateway high-availability lab: BIRD 2 on the upstream router, the gateways and the
    // servers (BGP with BFD).
    ("bird2", "bird"),
    // The reference deployment the HA bench measures beside BGP: VRRP moving a VIP.
    ("keepalived", "keepalived"),
    // promtool checks and unit-tests the alert rules in dist/prometheus.
    ("prometheus", "promtool"),
    // No protobuf package: etcd-client (the crate) compiles etcd's protobuf definitions with the
    // protoc that the protoc-bin-vendored crate brings (tools/protoc, .cargo/config.toml).
];

#[derive(Parser)]
#[command(about = "ftn's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (nightly rust-src, bpf-linker, Debian packages).
    Setup,
    /// Set up, build in release mode, and build the Debian package
    /// target/debian/ftn_<version>_amd64.deb (cargo-deb; installed when missing), then check
    /// what it holds (extracted, not installed).
    Deb,
    /// Set up, then build the controller (which builds and embeds the eBPF object).
    Build {
        /// Build in release mode.
        #[arg(long)]
        release: bool,
    },
    /// clippy -D warnings on every host crate, and the eBPF crate with -D warnings.
    Lint,
    /// Set up, build, and run the live demo lab (client, gateway, primary, backup in network
    /// namespaces): failover when the primary's service dies, failback when it returns.
    Demo {
        /// Three gateways sharing one directory on a three-member etcd cluster instead, then
        /// three gateways behind a BGP router (ECMP, BFD) and one of them dying.
        #[arg(long)]
        cluster: bool,
    },
    /// The controller's shape: file and function size budgets, and that no module uses one
    /// declared after it in lib.rs (no import cycle). Also run by `lint`.
    Layout,
    /// Set up, build, lint, then run every test, including those that need root, BPF and
    /// network namespaces (run one at a time).
    Test,
    /// Set up, build in release mode, and run the benchmarks (docs/BENCHMARKS.md): per-packet
    /// cost, forwarding rate, failover, controller scale, each beside its baseline.
    Bench {
        /// Small counts: checks that every part runs and every key is written (CI).
        #[arg(long)]
        quick: bool,
        /// Also write the figures as one flat JSON object to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Only these parts (comma-separated: xdp, failover, scale, cluster).
        #[arg(long)]
        only: Option<String>,
    },
    /// Set up, build, then run the root test suite RUNS times in a row while a bounded CPU hog
    /// keeps one core busy (the labs must not flake on a loaded machine).
    Soak {
        /// How many runs of the root suite.
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Run without the CPU hog.
        #[arg(long)]
        no_hog: bool,
        /// The hog stops after this many minutes whatever happens.
        #[arg(long, default_value_t = 60)]
        max_minutes: u64,
    },
    /// Prove the README's commands on a fresh machine: a cached debootstrap'd Debian 12 root
    /// with only rustup (the host's toolchains), the commit under test cloned into it; builds
    /// without bpf-linker/protoc, then runs `cargo xtask demo` and `cargo xtask test` there.
    FreshRoot {
        /// Where the debootstrap'd base root is cached (and the timing log appended).
        #[arg(long, default_value = "/var/cache/ftn-fresh-root")]
        cache: PathBuf,
        /// The commit to test (uncommitted changes are never included).
        #[arg(long, default_value = "HEAD")]
        rev: String,
        /// Phases to run, comma-separated: plain, demo, test (and `check`, a quick probe of
        /// the root).
        #[arg(long, default_value = "plain,demo,test,deb")]
        only: String,
        /// Keep the run's work dir (the root) for debugging.
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Every cargo that xtask runs builds the real eBPF object or fails (ftn-controller/build.rs
    // embeds a stub only for plain `cargo` builds on a machine without bpf-linker).
    std::env::set_var("FTN_EBPF", "require");
    let root = workspace_root()?;
    // Paths given on the command line are relative to where xtask was invoked.
    let invoked_from = std::env::current_dir().unwrap_or_else(|_| root.clone());
    std::env::set_current_dir(&root).with_context(|| format!("cd {}", root.display()))?;
    match cli.task {
        Task::Setup => setup(),
        Task::Build { release } => {
            setup()?;
            build(release)
        }
        Task::Lint => {
            setup()?;
            lint()
        }
        Task::Layout => layout::run(&workspace_root()?),
        Task::Deb => {
            setup()?;
            build(true)?;
            let deb = deb::run(&workspace_root()?)?;
            step(&format!("deb: built {}", deb.display()));
            Ok(())
        }
        Task::Demo { cluster } => {
            setup()?;
            if !is_root() {
                bail!("the demo creates network namespaces and loads XDP: run `cargo xtask demo` as root");
            }
            // Builds the `ftn` daemon the demo runs, and the demo itself.
            build(false)?;
            // --cluster: the shared directory's demo, then the gateways' high availability
            // (a gateway dying under traffic behind a BGP router).
            let demos: &[&str] = if cluster {
                &["target/debug/ftn-cluster-demo", "target/debug/ftn-ha-demo"]
            } else {
                &["target/debug/ftn-lab-demo"]
            };
            for demo in demos {
                Cmd::new(demo, &[])
                    .env("FTN_BIN", "target/debug/ftn")
                    .run()?;
            }
            Ok(())
        }
        Task::Bench { quick, json, only } => {
            setup()?;
            if !is_root() {
                bail!("the benchmark loads XDP programs and creates network namespaces: run `cargo xtask bench` as root");
            }
            build(true)?;
            let json = json.map(|p| {
                if p.is_absolute() {
                    p
                } else {
                    invoked_from.join(p)
                }
            });
            let mut args: Vec<String> = Vec::new();
            if quick {
                args.push("--quick".into());
            }
            if let Some(p) = &json {
                args.push("--json".into());
                args.push(p.display().to_string());
            }
            if let Some(o) = only {
                args.push("--only".into());
                args.push(o);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Cmd::new("target/release/ftn-bench", &args)
                .env("FTN_BIN", "target/release/ftn")
                .run()
        }
        Task::Test => {
            setup()?;
            build(false)?;
            lint()?;
            test()
        }
        Task::Soak {
            runs,
            no_hog,
            max_minutes,
        } => {
            setup()?;
            if !is_root() {
                bail!("the root suite needs root (CAP_BPF, CAP_NET_ADMIN): run `cargo xtask soak` as root");
            }
            build(false)?;
            soak::run(soak::Options {
                runs,
                hog: !no_hog,
                max: std::time::Duration::from_secs(max_minutes * 60),
            })
        }
        Task::FreshRoot {
            cache,
            rev,
            only,
            keep,
        } => fresh_root::run(
            &root,
            fresh_root::Options {
                cache: invoked_from.join(cache),
                rev,
                only,
                keep,
            },
        ),
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("xtask has no parent directory"))
}

/// A command that is printed before it runs and fails with its command line.
struct Cmd {
    inner: Command,
    line: String,
}

impl Cmd {
    fn new(program: &str, args: &[&str]) -> Cmd {
        let mut inner = Command::new(program);
        inner.args(args);
        Cmd {
            inner,
            line: format!("{program} {}", args.join(" ")),
        }
    }

    fn env(mut self, k: &str, v: &str) -> Cmd {
        self.inner.env(k, v);
        self.line = format!("{k}={v} {}", self.line);
        self
    }

    /// Runs with inherited output; error if it cannot start or exits non-zero.
    fn run(mut self) -> Result<()> {
        eprintln!("xtask: $ {}", self.line);
        let status = self
            .inner
            .status()
            .with_context(|| format!("cannot run `{}`", self.line))?;
        if !status.success() {
            bail!("`{}` failed: {status}", self.line);
        }
        Ok(())
    }

    /// Runs quietly and returns stdout; error if it fails.
    fn output(mut self) -> Result<String> {
        let out = self
            .inner
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("cannot run `{}`", self.line))?;
        if !out.status.success() {
            bail!(
                "`{}` failed: {}: {}",
                self.line,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn step(msg: &str) {
    eprintln!("xtask: {msg}");
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1 || test -x /usr/sbin/{cmd} || test -x /sbin/{cmd}")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn setup() -> Result<()> {
    step("set-up: checking what this machine has");
    if !have("rustup") {
        bail!("rustup is not installed: ftn needs rustup (stable for userspace, nightly for the eBPF object); see https://rustup.rs");
    }
    // Nightly with rust-src (for -Z build-std=core).
    let toolchains = Cmd::new("rustup", &["toolchain", "list"]).output()?;
    if toolchains.lines().any(|l| l.starts_with("nightly")) {
        step("nightly toolchain: present");
    } else {
        step("nightly toolchain: missing, installing (minimal profile)");
        Cmd::new(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )
        .run()
        .context("installing the nightly toolchain (needed only to build the eBPF object)")?;
    }
    let comps = Cmd::new(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .output()?;
    if comps.lines().any(|l| l.starts_with("rust-src")) {
        step("rust-src for nightly: present");
    } else {
        step("rust-src for nightly: missing, installing");
        Cmd::new(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )
        .run()?;
    }
    let vv = Cmd::new("rustc", &["+nightly", "-vV"]).output()?;
    let llvm = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .ok_or_else(|| anyhow!("`rustc +nightly -vV` prints no LLVM version"))?;
    let llvm_major = llvm.split('.').next().unwrap_or("?");
    step(&format!(
        "nightly rustc uses LLVM {llvm} (major {llvm_major})"
    ));

    // bpf-linker: 0.10.x loads the nightly's own libLLVM at run time, so it always matches.
    let linker = Command::new("bpf-linker").arg("--version").output();
    match linker {
        Ok(o)
            if o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION) =>
        {
            step(&format!("bpf-linker {BPF_LINKER_VERSION}: present (uses the nightly's libLLVM {llvm_major})"));
        }
        other => {
            let found = match other {
                Ok(o) => format!("found `{}`", String::from_utf8_lossy(&o.stdout).trim()),
                Err(_) => "not found".to_string(),
            };
            step(&format!(
                "bpf-linker {BPF_LINKER_VERSION}: {found}; installing with cargo (a few minutes)"
            ));
            Cmd::new(
                "cargo",
                &[
                    "install",
                    &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                    "--locked",
                    "--force",
                ],
            )
            .run()
            .context("installing bpf-linker from crates.io")?;
        }
    }

    // Debian packages.
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(_, c)| !have(c))
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        step(&format!(
            "Debian packages: present ({})",
            APT_PACKAGES
                .iter()
                .map(|p| p.0)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    } else if !is_root() {
        bail!(
            "Debian packages missing: {}; run `sudo cargo xtask setup` (installing needs root)",
            missing.join(" ")
        );
    } else {
        step(&format!(
            "Debian packages missing: {}; installing with apt-get",
            missing.join(" ")
        ));
        apt_install(&missing)?;
    }

    // Root, BPF filesystem.
    if is_root() {
        if !Path::new("/sys/fs/bpf").exists() || !is_bpffs("/sys/fs/bpf") {
            step("/sys/fs/bpf is not a BPF filesystem: mounting it");
            Cmd::new("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"]).run()?;
        } else {
            step("BPF filesystem: mounted at /sys/fs/bpf");
        }
    } else {
        step("WARNING: not root: building works, but loading XDP and the root tests need root (CAP_BPF, CAP_NET_ADMIN)");
    }
    step("set-up: done");
    Ok(())
}

/// `apt-get install` of `packages`; when it fails (e.g. empty package lists on a fresh
/// machine), the lists are refreshed once and it is tried again.
fn apt_install(packages: &[&str]) -> Result<()> {
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(packages);
    let install = || {
        Cmd::new("apt-get", &args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run()
    };
    if install().is_err() {
        step("apt-get install failed; refreshing the package lists and trying again");
        Cmd::new("apt-get", &["update"]).run()?;
        install()?;
    }
    Ok(())
}

fn is_bpffs(path: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 2 && f[1] == path && f[2] == "bpf"
            })
        })
        .unwrap_or(false)
}

fn build(release: bool) -> Result<()> {
    let mut args = vec![
        "build",
        "--locked",
        "--package",
        "ftn-controller",
        "--package",
        "ftn-tests",
        "--all-targets",
    ];
    if release {
        args.push("--release");
    }
    Cmd::new("cargo", &args).run()
}

fn lint() -> Result<()> {
    step("layout: size budgets and module order of ftn-controller");
    layout::run(&workspace_root()?)?;
    Cmd::new(
        "cargo",
        &[
            "clippy",
            "--locked",
            "--workspace",
            "--exclude",
            "ftn-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )
    .run()?;
    // The eBPF crate: checked for its own target with warnings denied (no linking needed).
    Cmd::new(
        "cargo",
        &[
            "+nightly",
            "clippy",
            "--locked",
            "--package",
            "ftn-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--target-dir",
            "target/ebpf-lint",
            "--",
            "-D",
            "warnings",
        ],
    )
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        "--cfg=bpf_target_arch=\"x86_64\"",
    )
    .env("RUSTUP_TOOLCHAIN", "nightly")
    .run()
}

/// The root test suite (`ftn-tests`), with these extra test-harness arguments. The root tests
/// share kernel state (namespaces, XDP, bpffs): one at a time.
fn root_suite(extra: &[&str]) -> Cmd {
    let mut args = vec![
        "test",
        "--locked",
        "--package",
        "ftn-tests",
        "--",
        "--test-threads=1",
    ];
    args.extend_from_slice(extra);
    Cmd::new("cargo", &args)
}

fn test() -> Result<()> {
    // Host-only unit tests (no root needed).
    Cmd::new(
        "cargo",
        &[
            "test",
            "--locked",
            "--workspace",
            "--exclude",
            "ftn-ebpf",
            "--exclude",
            "ftn-tests",
        ],
    )
    .run()?;
    if !is_root() {
        bail!(
            "the integration tests (packet fixtures through BPF_PROG_TEST_RUN, network-namespace labs) \
             need root with CAP_BPF and CAP_NET_ADMIN: run `sudo cargo xtask test`. They are not skipped."
        );
    }
    // Output shown.
    root_suite(&["--nocapture"]).run()?;
    step("all tests passed");
    Ok(())
}
