//! `cargo xtask bench`: figures measured beside a baseline in the same run (see
//! docs/BENCHMARKS.md). Every part returns [`Figure`]s; a figure that could not be measured has
//! no value and says why.

pub mod cluster;
pub mod cluster_scale;
pub mod failover;
pub mod ha;
pub mod scale;
pub mod scrape;
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

/// The repetitions of one measurement. Every repetition must succeed for the figure to have a
/// value: a repetition that failed makes the figure fail (no median of the survivors), and the
/// figure's note says which repetition failed and why.
pub struct Reps<T> {
    total: usize,
    runs: Vec<T>,
    failed: Vec<String>,
}

impl<T> Reps<T> {
    pub fn new(total: usize) -> Self {
        Reps {
            total,
            runs: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// Runs repetition `rep` (0-based) through [`attempt`] and keeps its result or its error.
    pub fn run(&mut self, rep: usize, f: impl FnOnce() -> Result<T, String>) {
        match attempt(f) {
            Ok(r) => self.runs.push(r),
            Err(e) => self
                .failed
                .push(format!("repetition {} of {}: {e}", rep + 1, self.total)),
        }
    }

    /// Every repetition's result, or why the figure has no value.
    pub fn all(&self) -> Result<&[T], String> {
        if self.failed.is_empty() && self.runs.len() == self.total {
            Ok(&self.runs)
        } else {
            Err(format!(
                "{} of {} repetition(s) failed, so there is no figure (a failed repetition is not left out of a median): {}",
                self.total - self.runs.len(),
                self.total,
                self.failed.join(" | ")
            ))
        }
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

#[cfg(test)]
mod reps_tests {
    use super::*;

    #[test]
    fn one_failed_repetition_fails_the_figure() {
        let mut r: Reps<f64> = Reps::new(3);
        r.run(0, || Ok(10.0));
        r.run(1, || Err("the backup never answered".into()));
        r.run(2, || Ok(12.0));
        let why = r
            .all()
            .expect_err("a failed repetition must fail the figure");
        assert!(
            why.contains("1 of 3") && why.contains("repetition 2 of 3: the backup never answered"),
            "{why}"
        );
    }

    #[test]
    fn a_panicking_repetition_fails_the_figure() {
        let mut r: Reps<f64> = Reps::new(2);
        r.run(0, || Ok(10.0));
        r.run(1, || panic!("lab step failed"));
        let why = r.all().expect_err("a panic is a failed repetition");
        assert!(why.contains("lab step failed"), "{why}");
    }

    #[test]
    fn every_repetition_passed_gives_every_result() {
        let mut r: Reps<f64> = Reps::new(2);
        r.run(0, || Ok(10.0));
        r.run(1, || Ok(20.0));
        assert_eq!(r.all(), Ok(&[10.0, 20.0][..]));
    }
}
