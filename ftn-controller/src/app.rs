//! `ftn run`: the one place where the pieces are wired together. It loads the configuration,
//! opens the directory (embedded or etcd), loads or adopts the XDP dataplane, starts the
//! map-sync thread, the passive-health reader and the interface watcher, builds the
//! [`Controller`] (the decision engine's loop), serves the admin API and turns signals into a
//! shutdown token and a reload channel.
//!
//! Dependency order: the controller ([`crate::control`]) receives handles and never names the API
//! server; the API server receives handles and never names the controller; only this module
//! names both.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use ftn_common::PassiveEvent;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::checks::NetProber;
use crate::config::{self, Config, DirectoryConfig};
use crate::control::{ClusterView, Controller};
use crate::dataplane::sync::MapSync;
use crate::dataplane::{AyaDataplane, AyaOptions, Dataplane};
use crate::directory::etcd::{EtcdDirectory, GatewayRecord, Session};
use crate::directory::{Directory, EmbeddedDirectory};

/// The pin directory must be on a BPF filesystem, else pinning fails with an obscure error.
fn check_bpffs(pin_dir: &Path) -> anyhow::Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    let c = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes())
        .context("pin_dir contains a NUL byte")?;
    // SAFETY: statfs writes into the zeroed struct we pass; the path is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if r != 0 {
        anyhow::bail!(
            "gateway.pin_dir {}: its parent {} is not accessible ({}); mount the BPF filesystem there (mount -t bpf bpf /sys/fs/bpf)",
            pin_dir.display(),
            parent.display(),
            std::io::Error::last_os_error()
        );
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        anyhow::bail!(
            "gateway.pin_dir {}: {} is not a BPF filesystem, so the dataplane cannot stay pinned across controller restarts; mount it (mount -t bpf bpf /sys/fs/bpf) or choose a pin_dir under a bpffs mount (note: `ip netns exec` remounts /sys and hides bpffs; use `nsenter --net=/run/netns/NAME`)",
            pin_dir.display(),
            parent.display()
        );
    }
    Ok(())
}

/// Descriptors kept for everything but the health checks and the admin API: the BPF program,
/// maps and links, the directory's files, etcd's connections, the runtime's epoll and eventfds,
/// the blocking pool's file reads, the log.
pub const FD_RESERVE: u64 = 256;

/// Raises the soft open-file limit to the hard one (what systemd recommends for services that
/// need many descriptors; `LimitNOFILE=` in dist/ftn.service sets both) and returns the soft
/// limit in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Descriptors the health checks may hold at once: one per probe in flight, and a check has at
/// most `fall` in flight (while its server is suspected), else one.
pub fn check_fds(config: &Config) -> u64 {
    config
        .servers
        .iter()
        .flat_map(|s| &s.checks)
        .map(|c| u64::from(c.fall.max(1)))
        .sum()
}

/// The admin API's share of the open-file limit `nofile`: what the configuration asks, but never
/// more than what is left once the checks and [`FD_RESERVE`] are counted. The checks come first:
/// a flood of API connections must never make a check fail to open its socket.
pub fn api_limits(config: &Config, nofile: u64) -> crate::api::ApiLimits {
    let checks = check_fds(config);
    let left = nofile.saturating_sub(checks + FD_RESERVE);
    let wanted = config.api.max_connections as u64;
    let max_connections = if left >= wanted {
        wanted
    } else {
        // Not enough: the API still gets a handful, taken from the reserve.
        let n = left.max(4);
        tracing::warn!(
            nofile,
            checks_need = checks,
            reserve = FD_RESERVE,
            api_max_connections = wanted,
            "the open-file limit is too low for the health checks plus api.max_connections: the admin API serves at most {n} connections at once; raise LimitNOFILE (see docs/OPERATIONS.md, Hardening)"
        );
        n
    };
    tracing::info!(
        nofile,
        checks_need = checks,
        api_max_connections = max_connections,
        "open-file budget"
    );
    crate::api::ApiLimits {
        max_connections: max_connections as usize,
        max_per_client: config.api.max_connections_per_client,
        header_timeout: config.api.header_timeout,
        request_timeout: config.api.request_timeout,
    }
}

/// Reads passive health reports from the dataplane's ring buffer and forwards them.
fn spawn_passive_reader(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    tx: mpsc::Sender<PassiveEvent>,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its file descriptor, open and unchanged until the AsyncFd
    // (which owns the ring) is dropped.
    let mut fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
    }
    .map_err(|e| {
        anyhow::anyhow!(
            "polling the passive-health ring buffer: {}",
            e.into_parts().1
        )
    })?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                break;
            };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() >= std::mem::size_of::<PassiveEvent>() {
                    // SAFETY: the program writes whole `PassiveEvent`s (repr(C), plain
                    // integers); read_unaligned copes with any alignment.
                    let ev =
                        unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<PassiveEvent>()) };
                    // Reports are hints: drop them rather than block when the engine is busy.
                    let _ = tx.try_send(ev);
                }
            }
            guard.clear_ready();
        }
    });
    Ok(())
}

/// `ftn run`: everything from the config file to the signal that stops it.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Arc::new(config::load(config_path)?);
    // A binary built without the eBPF toolchain (build.rs embedded a stub) stops here, before it
    // opens the directory or touches the pin folder, and says why.
    crate::dataplane::ebpf_object()?;
    let (directory, etcd_dir) = open_directory(&config).await?;
    let Loaded {
        mut dp,
        attached,
        adopted,
        interfaces,
    } = load_dataplane(&config)?;
    let v6 = config.resources.iter().any(|r| r.vip.is_ipv6());
    for i in &config.gateway.interfaces {
        if let Some(w) = crate::control::forwarding_warning(i, v6) {
            tracing::warn!("{w}");
        }
    }
    let (passive_tx, passive_rx) = mpsc::channel(1024);
    match dp.take_events() {
        Some(ring) => spawn_passive_reader(ring, passive_tx)?,
        None => {
            tracing::warn!("no passive-health ring buffer: detection relies on active checks only")
        }
    }
    // Scrapes read the counters through handles of their own, never on the map-sync thread.
    let counters: Option<Box<dyn crate::dataplane::sync::ReadCounters>> = match dp.counter_reader()
    {
        Ok(c) => Some(Box::new(c)),
        Err(e) => {
            tracing::warn!("cannot open the counters apart from the map writes ({e}); /metrics reads them through the map-sync thread");
            None
        }
    };
    let sync = MapSync::spawn(dp);
    *sync
        .stats()
        .interfaces
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = interfaces;
    let shutdown = CancellationToken::new();
    crate::links::spawn_watcher(sync.clone(), shutdown.clone());
    let (cluster_tx, cluster_rx) = mpsc::channel(256);
    let cluster = etcd_dir
        .map(|(dir, ttl)| start_cluster(&config, dir, ttl, cluster_tx.clone(), shutdown.clone()));
    let mut controller = Controller::start_with_prober(
        config.clone(),
        directory,
        sync.clone(),
        attached,
        adopted,
        Arc::new(NetProber),
        cluster,
    )
    .await?;
    // Start-up (parsing a large configuration, the first plan) leaves freed memory behind in the
    // allocator's arenas; hand it back to the system.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
    if let Some(a) = &config.announce {
        let table = crate::announce::kernel::KernelTable::open(a.table)
            .context("opening a netlink socket for the announce table")?;
        controller.set_announcer(crate::announce::Announcer::spawn(
            Box::new(table),
            a.table,
            sync.shared_stats(),
            adopted,
            shutdown.clone(),
        ));
    }
    let token = controller.token.clone();
    let (req_tx, req_rx) = mpsc::channel(64);
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let api = crate::api::serve(
        config.api.listen,
        crate::api::ApiState::new(req_tx, token, sync.clone(), counters)
            .context("starting the admin API's worker thread")?,
        api_limits(&config, raise_nofile_limit()),
        shutdown.clone(),
    )
    .await?;
    // Installed only now: a SIGTERM during start-up still ends the process at once.
    spawn_signal_handlers(shutdown.clone(), reload_tx);
    tracing::info!(config = %config_path.display(), api = %config.api.listen, "ftn controller running");
    controller
        .run(req_rx, reload_rx, passive_rx, cluster_rx, shutdown.clone())
        .await;
    shutdown.cancel();
    drop(cluster_tx);
    let _ = api.await;
    Ok(())
}

/// The shared directory's handle and its lease time, when the directory is on etcd.
type EtcdHandle = Option<(Arc<EtcdDirectory>, std::time::Duration)>;

/// Opens the embedded directory, or connects to etcd and checks that this gateway's
/// declarations and name fit the shared directory.
async fn open_directory(config: &Config) -> anyhow::Result<(Arc<dyn Directory>, EtcdHandle)> {
    let mut etcd_dir: EtcdHandle = None;
    let directory: Arc<dyn Directory> = match &config.directory {
        DirectoryConfig::Embedded { path } => Arc::new(
            EmbeddedDirectory::open(path)
                .with_context(|| format!("opening the embedded directory at {}", path.display()))?,
        ),
        DirectoryConfig::Etcd(ec) => {
            let pool = crate::directory::etcd::Pool::connect(ec).await?;
            let keys = crate::directory::etcd::Keys::new(&ec.prefix);
            crate::directory::etcd::check_declarations(&pool, &keys, config).await?;
            crate::directory::etcd::check_name_free(
                &pool,
                &keys,
                &config.gateway.name,
                &crate::directory::etcd::machine_id(),
            )
            .await?;
            let dir = Arc::new(
                EtcdDirectory::open(pool, keys)
                    .await
                    .context("reading the shared directory from etcd")?,
            );
            tracing::info!(endpoints = %ec.endpoints.join(","), prefix = %ec.prefix, gateway = %config.gateway.name, "shared directory on etcd");
            etcd_dir = Some((dir.clone(), ec.lease_ttl));
            dir
        }
    };
    Ok((directory, etcd_dir))
}

/// The dataplane as loaded or adopted, before the map-sync thread owns it.
struct Loaded {
    dp: AyaDataplane,
    attached: Vec<String>,
    adopted: bool,
    interfaces: Vec<crate::dataplane::InterfaceState>,
}

/// Loads the XDP program and attaches it, or adopts the pinned one (which must be attached to
/// the configured interfaces), sets its configuration and repairs replaced interfaces.
fn load_dataplane(config: &Config) -> anyhow::Result<Loaded> {
    check_bpffs(&config.gateway.pin_dir)?;
    if config.gateway.pin_dir.exists()
        && !crate::dataplane::pinned_dataplane_exists(&config.gateway.pin_dir)
    {
        tracing::warn!(
            pin_dir = %config.gateway.pin_dir.display(),
            "the pin directory holds an incomplete or older dataplane (not every map of this ftn version is pinned there): \
             it is replaced by a fresh load, which forgets established flows; this upgrade is not hitless"
        );
    }
    let opts = AyaOptions {
        interfaces: config.gateway.interfaces.clone(),
        mode: config.gateway.xdp_mode,
        pin_dir: Some(config.gateway.pin_dir.clone()),
        flow_capacity: config.gateway.flow_table,
        pending_capacity: config.gateway.pending_table,
    };
    let mut dp = AyaDataplane::open(&opts).with_context(|| {
        format!(
            "loading the XDP dataplane on {} (pin dir {})",
            config.gateway.interfaces.join(", "),
            config.gateway.pin_dir.display()
        )
    })?;
    let adopted = dp.adopted();
    let attached: Vec<String> = dp.attached().iter().map(|a| a.interface.clone()).collect();
    if adopted {
        let want: BTreeSet<&String> = config.gateway.interfaces.iter().collect();
        let have: BTreeSet<&String> = attached.iter().collect();
        if want != have {
            anyhow::bail!(
                "the pinned dataplane under {} is attached to [{}] but the configuration says [{}]; run `ftn detach --pin-dir {}` first (traffic is not forwarded by ftn until the next start)",
                config.gateway.pin_dir.display(),
                attached.join(", "),
                config.gateway.interfaces.join(", "),
                config.gateway.pin_dir.display()
            );
        }
        tracing::info!(interfaces = %attached.join(","), pin_dir = %config.gateway.pin_dir.display(), "adopted the pinned dataplane: it kept forwarding while the controller was down");
        match dp.flow_table_entries() {
            Ok(n) if n != config.gateway.flow_table => tracing::warn!(
                pinned = n,
                configured = config.gateway.flow_table,
                "the pinned flow table holds {n} entries, gateway.flow_table says {}: the pinned size stays until `ftn detach` and a restart (a new load)",
                config.gateway.flow_table
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot read the pinned flow table's size: {e}"),
        }
    } else {
        tracing::info!(interfaces = %attached.join(","), "XDP dataplane loaded and attached");
        if let Some(ebpf) = dp.ebpf_mut() {
            crate::logs::bridge(ebpf);
        }
    }
    dp.set_config(&config.dataplane)?;
    // An adopted dataplane may be attached to an interface that was replaced meanwhile (same
    // name, new ifindex): repaired here, before anything else.
    let interfaces = dp.follow_interfaces();
    for i in &interfaces {
        match (&i.note, i.attached) {
            (Some(note), true) => tracing::info!(interface = %i.name, "{note}"),
            (Some(note), false) => tracing::warn!(interface = %i.name, "{note}"),
            (None, _) => {}
        }
    }
    Ok(Loaded {
        dp,
        attached,
        adopted,
        interfaces,
    })
}

/// This gateway's session in the shared directory (lease, leader election, gateway record).
fn start_cluster(
    config: &Config,
    dir: Arc<EtcdDirectory>,
    ttl: std::time::Duration,
    cluster_tx: mpsc::Sender<crate::directory::etcd::ClusterEvent>,
    shutdown: CancellationToken,
) -> ClusterView {
    let record = GatewayRecord {
        name: config.gateway.name.clone(),
        api: config.api.listen.to_string(),
        started_ms: crate::directory::now_ms(),
        machine: crate::directory::etcd::machine_id(),
        ..Default::default()
    };
    let session = Session::start(
        dir.clone(),
        config.gateway.name.clone(),
        ttl,
        record,
        cluster_tx,
        shutdown,
    );
    ClusterView::new(config.gateway.name.clone(), dir, session)
}

/// SIGHUP reloads the configuration; SIGTERM and SIGINT stop the controller (the dataplane
/// stays pinned and forwarding).
fn spawn_signal_handlers(shutdown: CancellationToken, reload_tx: mpsc::Sender<()>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => { tracing::info!("SIGHUP: reloading the configuration"); let _ = reload_tx.send(()).await; }
                _ = term.recv() => { tracing::info!("SIGTERM: stopping the controller; the dataplane stays pinned and forwarding"); shutdown.cancel(); break; }
                _ = int.recv() => { tracing::info!("SIGINT: stopping the controller; the dataplane stays pinned and forwarding"); shutdown.cancel(); break; }
            }
        }
    });
}
