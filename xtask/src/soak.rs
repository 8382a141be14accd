//! `cargo xtask soak`: the root test suite, several times in a row, while a CPU hog keeps one
//! core busy: the labs' waits are derived from the configured timing plus a stated margin
//! (tests/src/timing.rs), and this is how that is shown to hold on a loaded machine.
//!
//! The hog is one thread of this process spinning on the last CPU (pinned with
//! `sched_setaffinity`), bounded twice: it stops when the runs end and, whatever happens, after
//! `--max` (default 60 min). Every run's result and time is printed, then a summary; the task
//! fails if any run failed (all runs are made, so the summary shows how many passed).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{root_suite, step};

pub struct Options {
    pub runs: u32,
    pub hog: bool,
    pub max: Duration,
}

/// A thread that keeps one CPU busy until dropped or until its time is up.
struct Hog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Hog {
    fn start(max: Duration) -> Result<Hog> {
        // The last CPU this process may run on (not merely the last one of the machine).
        // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it for this thread.
        let allowed: Vec<usize> = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
            }
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        };
        let (cpus, cpu) = match allowed.last() {
            Some(&c) => (allowed.len(), c),
            None => bail!("this process may run on no CPU"),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cpu-hog".into())
            .spawn(move || {
                // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it; pid 0 is
                // this thread.
                let pinned = unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
                };
                if pinned != 0 {
                    eprintln!(
                        "xtask: soak: WARNING: the hog could not be pinned to CPU {cpu} ({}): it spins unpinned",
                        std::io::Error::last_os_error()
                    );
                }
                let t = Instant::now();
                let mut x: u64 = 0;
                while !flag.load(Ordering::Relaxed) && t.elapsed() < max {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                }
            })?;
        step(&format!(
            "soak: CPU hog spinning on CPU {cpu} ({cpus} CPU(s) allowed; stops after the runs, at most {max:?})"
        ));
        Ok(Hog {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn run(opts: Options) -> Result<()> {
    let hog = if opts.hog {
        Some(Hog::start(opts.max)?)
    } else {
        None
    };
    let mut results: Vec<(u32, Duration, Result<()>)> = Vec::new();
    for n in 1..=opts.runs {
        step(&format!("soak: root suite, run {n} of {}", opts.runs));
        let t = Instant::now();
        // Output only of failing tests.
        let r = root_suite(&[]).run();
        let took = t.elapsed();
        step(&format!(
            "soak: run {n}: {} in {:.0} s",
            if r.is_ok() { "passed" } else { "FAILED" },
            took.as_secs_f64()
        ));
        results.push((n, took, r));
    }
    drop(hog);
    let passed = results.iter().filter(|r| r.2.is_ok()).count();
    step(&format!(
        "soak summary ({}):",
        if opts.hog {
            "CPU hog on one core"
        } else {
            "no hog"
        }
    ));
    for (n, took, r) in &results {
        match r {
            Ok(()) => step(&format!("  run {n}: passed ({:.0} s)", took.as_secs_f64())),
            Err(e) => step(&format!(
                "  run {n}: FAILED ({:.0} s): {e:#}",
                took.as_secs_f64()
            )),
        }
    }
    step(&format!("  {passed} of {} runs passed", results.len()));
    if passed != results.len() {
        bail!(
            "{} of {} soak runs failed",
            results.len() - passed,
            results.len()
        );
    }
    Ok(())
}
