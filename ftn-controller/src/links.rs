//! Following the gateway's interfaces: a netlink socket subscribed to link changes wakes the
//! map-sync thread, which re-reads every configured name's ifindex and attaches XDP again to an
//! interface that was deleted and created under the same name (see
//! `dataplane::AyaDataplane::follow_interfaces`).
//!
//! The netlink messages are only a wake-up; their content is not parsed. What counts is what
//! the names resolve to when the dataplane looks, so a lost message (the socket's buffer
//! overflowed: ENOBUFS) or one that arrives before the new interface is complete costs nothing:
//! the dataplane also looks every [`FOLLOW_EVERY`].

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use crate::dataplane::sync::MapSync;

/// The dataplane looks at its interfaces at least this often, netlink or not.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(2);
/// After a link message, the look waits this long for the rest of a burst (a re-created
/// interface comes with several messages: new link, up, addresses).
pub const SETTLE: Duration = Duration::from_millis(20);

/// A non-blocking netlink route socket subscribed to `RTMGRP_LINK`.
fn link_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_nl is valid; the fields are set below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = libc::RTMGRP_LINK as u32;
    // SAFETY: a valid sockaddr_nl of the size given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Reads everything queued on the socket; true when at least one message (or an overflow)
/// came.
fn drain(fd: &OwnedFd) -> io::Result<bool> {
    let mut buf = [0u8; 16 * 1024];
    let mut any = false;
    loop {
        // SAFETY: reading into a buffer of the length given.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        if n >= 0 {
            any = true;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(any),
            // Messages were lost: look anyway.
            Some(libc::ENOBUFS) => any = true,
            Some(libc::EINTR) => {}
            _ => return Err(e),
        }
    }
}

/// Wakes the dataplane's interface following on every link change and every [`FOLLOW_EVERY`],
/// until `shutdown`. Without a netlink socket it only polls (and says so).
pub fn spawn_watcher(sync: MapSync, shutdown: CancellationToken) {
    tokio::spawn(async move {
        // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open until it is dropped.
        // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open until it is dropped.
        let mut socket = match link_socket()
            .and_then(|fd| unsafe { AsyncFd::register(fd) }.map_err(io::Error::from))
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    "cannot watch link changes over netlink ({e}); interfaces are looked at every {FOLLOW_EVERY:?} instead"
                );
                None
            }
        };
        let mut every = tokio::time::interval(FOLLOW_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let changed = async {
                match &socket {
                    Some(s) => s.readable().await,
                    None => std::future::pending().await,
                }
            };
            let failed = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {
                    sync.follow_interfaces();
                    None
                }
                ready = changed => match ready {
                    Err(e) => Some(e),
                    Ok(mut guard) => {
                        let r = drain(guard.get_ref().get_ref());
                        if let Ok(true) = r {
                            tokio::time::sleep(SETTLE).await;
                            let _ = drain(guard.get_ref().get_ref());
                            sync.follow_interfaces();
                        }
                        guard.clear_ready();
                        r.err()
                    }
                },
            };
            if let Some(e) = failed {
                // Never spin on a broken socket: the periodic look goes on alone.
                tracing::warn!(
                    "reading link changes over netlink failed ({e}); interfaces are looked at every {FOLLOW_EVERY:?} from now on"
                );
                socket = None;
            }
        }
    });
}
