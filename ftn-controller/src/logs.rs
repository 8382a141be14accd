//! Logging: `tracing` for the controller, with the eBPF program's aya-log records bridged in
//! (aya-log emits `log` records; tracing-subscriber's `tracing-log` bridge turns them into
//! tracing events under the target of the eBPF module).

/// Starts forwarding the loaded program's aya-log records, if the program has a log buffer.
/// ftn's XDP program logs nothing on its packet path (a log call per packet would cost more
/// than the forwarding itself); it counts instead, and the counters are in `/metrics`. The
/// bridge is here so that a build with log calls (debugging) shows them in the controller's
/// log without other changes.
pub fn bridge(ebpf: &mut aya::Ebpf) {
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => {
            // SAFETY: the logger owns its ring buffer's file descriptor, which stays open and
            // the same until the `AsyncFd` (which owns the logger) is dropped.
            let fd = match unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    logger,
                    tokio::io::Interest::READABLE,
                )
            } {
                Ok(fd) => fd,
                Err(e) => {
                    tracing::warn!(
                        "eBPF log bridge: cannot poll the log buffer: {}",
                        e.into_parts().1
                    );
                    return;
                }
            };
            let mut fd = fd;
            tokio::spawn(async move {
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else {
                        break;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
            tracing::info!("eBPF log records are bridged into this log");
        }
        Err(e) => {
            tracing::debug!(
                "no eBPF log buffer to bridge ({e}): the XDP program logs nothing, it counts"
            );
        }
    }
}
