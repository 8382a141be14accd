//! How long a lab may wait for the controller: every wait is derived from the timing the lab
//! configured plus one stated margin, never guessed.
//!
//! A health check starts every `interval` (a tick is skipped while a check is still in flight)
//! and fails after at most `timeout`; a server goes down after `fall` failed checks in a row
//! and up after `rise` passed ones. After a fault (or a recovery) the first check that sees it
//! starts within one interval, and each later one within `max(interval, timeout)` of the one
//! before, so a verdict needs at most `fall` (or `rise`) × (interval + timeout). Passive health
//! (clients' unanswered SYNs) only adds checks, so it can only make a verdict sooner. The
//! controller then commits the change (fsync) and writes the maps; the lab sees it through a
//! status poll. [`MARGIN`] covers that and a loaded machine's scheduling: a wait that passes
//! returns at once, so a large margin costs nothing unless the test fails.
//!
//! Waits that no configured timing governs are named constants with their reason:
//! [`START`] (a controller's start).

use std::time::Duration;

use ftn_controller::config::{
    DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_TIMEOUT, DEFAULT_FALL, DEFAULT_RISE,
};
use ftn_controller::model::DEFAULT_HOLD;

/// Added to every derived wait: the commit, the map write, the lab's status poll (20 ms), and
/// the scheduling delays of a 2-core machine under load (the labs pass with a CPU hog on one
/// core; see README "Tests").
pub const MARGIN: Duration = Duration::from_secs(3);

/// A started `ftn run` answers its API: it loads and attaches XDP (the verifier), opens the
/// directory and commits its first plan. No configured timing governs it; a few hundred ms on
/// an idle machine, with room for a loaded one.
pub const START: Duration = Duration::from_secs(10);

/// The check timing of a lab's configuration.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

impl Timing {
    /// ftn's defaults (a check table that sets no timing).
    pub const DEFAULT: Timing = Timing {
        interval: DEFAULT_CHECK_INTERVAL,
        timeout: DEFAULT_CHECK_TIMEOUT,
        rise: DEFAULT_RISE,
        fall: DEFAULT_FALL,
    };

    /// The defaults with another interval (as `interval = "…"` in a check table).
    pub const fn with_interval(interval: Duration) -> Timing {
        Timing {
            interval,
            ..Timing::DEFAULT
        }
    }

    /// The check options of a check table for this timing (empty for the defaults), to append
    /// inside `{ type = "tcp", port = 80 … }`: the lab's config and its waits come from the
    /// same value.
    pub fn check_options(&self) -> String {
        let d = Timing::DEFAULT;
        let mut s = String::new();
        if self.interval != d.interval {
            s += &format!(", interval = \"{}ms\"", self.interval.as_millis());
        }
        if self.timeout != d.timeout {
            s += &format!(", timeout = \"{}ms\"", self.timeout.as_millis());
        }
        if self.rise != d.rise {
            s += &format!(", rise = {}", self.rise);
        }
        if self.fall != d.fall {
            s += &format!(", fall = {}", self.fall);
        }
        s
    }

    /// The earliest the active checks alone can declare a server down after a fault (the first
    /// failing check right after it, then `fall - 1` intervals): a failover sooner than this
    /// can only come from passive health.
    pub fn down_earliest_active(&self) -> Duration {
        self.interval * self.fall.saturating_sub(1)
    }

    /// The longest a down verdict can take after a fault, without the margin.
    pub fn down_exact(&self) -> Duration {
        (self.interval + self.timeout) * self.fall
    }

    /// The longest an up verdict can take after a recovery, without the margin.
    pub fn up_exact(&self) -> Duration {
        (self.interval + self.timeout) * self.rise
    }

    /// How long to wait for a failover (down verdict, commit, map write) after a fault.
    pub fn down(&self) -> Duration {
        self.down_exact() + MARGIN
    }

    /// How long to wait for a server to be up again after it recovered.
    pub fn up(&self) -> Duration {
        self.up_exact() + MARGIN
    }

    /// How long to wait for a failback under `failback = "hold"` with `hold` after the primary
    /// recovered (up verdict, then the hold).
    pub fn failback_after(&self, hold: Duration) -> Duration {
        self.up_exact() + hold + MARGIN
    }

    /// [`Timing::failback_after`] with the default hold.
    pub fn failback_default_hold(&self) -> Duration {
        self.failback_after(DEFAULT_HOLD)
    }

    /// How long to wait, once a started controller answers its API, for it to serve the
    /// standard lab on its primary. A new server starts up, so this is normally at once; the
    /// bound also holds if a first check failed and the server must rise again.
    pub fn first_serve(&self) -> Duration {
        self.down_exact() + self.up()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_waits_follow_the_default_timing() {
        let t = Timing::DEFAULT;
        // fall 2 x (1 s + 50 ms), rise 3 x (1 s + 50 ms), plus the margin.
        assert_eq!(t.down(), Duration::from_millis(2100) + MARGIN);
        assert_eq!(t.up(), Duration::from_millis(3150) + MARGIN);
        assert_eq!(
            t.failback_after(Duration::from_secs(2)),
            Duration::from_millis(5150) + MARGIN
        );
    }

    #[test]
    fn check_options_name_only_what_differs() {
        assert_eq!(Timing::DEFAULT.check_options(), "");
        assert_eq!(
            Timing::with_interval(Duration::from_secs(2)).check_options(),
            ", interval = \"2000ms\""
        );
    }

    #[test]
    fn a_shorter_interval_shortens_the_waits() {
        let t = Timing::with_interval(Duration::from_millis(100));
        assert_eq!(t.down(), Duration::from_millis(300) + MARGIN);
        assert_eq!(t.up(), Duration::from_millis(450) + MARGIN);
    }
}
