//! `cargo xtask bench`: figures measured beside a baseline in the same run (see
//! docs/BENCHMARKS.md). Every part returns [`Figure`]s; a figure that could not be measured has
//! no value and says why.

pub mod cluster;
pub mod failover;
pub mod scale;
pub mod xdp;

/// One measured figure.
#[derive(Clone, Debug)]
pub struct Figure {
    /// The JSON key (issue 4's names).
    pub key: &'static str,
    pub value: Option<f64>,
    /// "ns", "pps", "ms", "probes", "connections", "cores", "MB", "ratio".
    pub unit: &'static str,
    /// How it was measured, its baseline, or why it is missing.
    pub note: String,
}

impl Figure {
    pub fn new(key: &'static str, value: f64, unit: &'static str, note: impl Into<String>) -> Self {
        Figure {
            key,
            value: Some(value),
            unit,
            note: note.into(),
        }
    }

    pub fn missing(key: &'static str, unit: &'static str, why: impl Into<String>) -> Self {
        Figure {
            key,
            value: None,
            unit,
            note: why.into(),
        }
    }
}

/// How much work each part does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// CI: every part runs, small counts, figures are not meaningful.
    Quick,
    Full,
}

/// Median of a non-empty sample (the mean of the two middle values for an even count).
pub fn median(v: &[f64]) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Runs `f`; a panic (a lab step that failed) becomes the error text (its first lines). The
/// guards (namespaces, programs, controllers) clean up while it unwinds.
pub fn attempt<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into())
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join(" / ")),
    }
}
