//! **`scrape_failover_delay_ms`**: what Prometheus scrapes cost a failover on a large gateway.
//!
//! The real `ftn run` (the binary from `FTN_BIN`, use a release build) in the servers lab of
//! [`super::scale`] (every address of 198.18.64.0/18 answers tcp:80 in a servers namespace)
//! with 100,000 resources on 10,000 servers (Quick: 1,000 on 100), checks slowed to
//! `interval = "10s", timeout = "1s"` except server `s0`'s (`interval = "100ms"`, the default
//! timeout 50 ms, fall 2, rise 3), and `failback = "immediate"` on the resources whose primary is
//! `s0` (so that each run starts from the same state). `[api] max_connections_per_client = 64`,
//! because the scrapers all come from 127.0.0.1.
//!
//! One run: `s0` stops answering (an nftables rule in the servers namespace drops its tcp:80);
//! its checks fail, the verdict is decided, committed to the embedded directory and written
//! to the maps; the bench polls the pinned resource map (every 1 ms, through aya, outside ftn)
//! until the entry of `r0` (198.18.128.1 tcp/80, primary `s0`) names `s1`, and then reads the
//! decision's time from its verdict to the maps from `/v1/status` (`last_verdict_to_maps_us`:
//! stamped by the checker at its verdict, recorded by the map-sync thread when the batch's
//! last map write returned). A run counts only if exactly that one decision was timed in it.
//! Then `s0` answers again and the bench waits for the failback to reach the maps.
//!
//! Runs alternate: without scrapers (the baseline), then with 50 scraper threads in the
//! gateway namespace, each GETting `/metrics` in a loop (a new connection each time, the whole
//! answer read) from before the fault (each has finished one scrape, or a bounded warm-up has
//! passed) until the maps hold the change. Full: 5 pairs; Quick: 1. The figure is the median
//! verdict-to-maps time with scrapers minus the median without. A failed run (no change within
//! the bound, another decision in the window, a failed scrape) makes the figure null.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ftn_controller::dataplane::AyaDataplane;
use ftn_controller::model::{Protocol, ResourceMatch};

use super::scale::{gateway_config, nth_v4, server_lab, ServerLab, SERVER_BASE};
use super::{attempt, median, Figure, Size};
use crate::{ftn::Ftn, Netns};

const SCRAPERS: usize = 50;
/// `s0`'s check: interval 100 ms, the default timeout (50 ms), fall 2, rise 3.
const S0_INTERVAL: Duration = Duration::from_millis(100);
const S0_TIMEOUT: Duration = Duration::from_millis(50);
/// Added to every bound derived from the check timing: a loaded machine may be slower, and a
/// bound that passes costs nothing (the waits return as soon as the maps change).
const MARGIN: Duration = Duration::from_secs(10);
const NFT_TABLE: &str = "ftn_bench_scrape";

/// Threads GETting /metrics in a loop until stopped.
struct Scrapers {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    /// Each scrape's duration, µs.
    times: Arc<Mutex<Vec<u64>>>,
    first_error: Arc<Mutex<Option<String>>>,
    threads: Vec<JoinHandle<()>>,
}

fn scrape_once(api: SocketAddr) -> Result<usize, String> {
    let mut s = TcpStream::connect_timeout(&api, Duration::from_secs(10))
        .map_err(|e| format!("connect {api}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: ftn\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::with_capacity(1 << 20);
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    if !raw.starts_with(b"HTTP/1.1 200") {
        let head = String::from_utf8_lossy(&raw[..raw.len().min(200)]).to_string();
        return Err(format!("answer: {head:?}"));
    }
    if !raw.ends_with(b"# EOF\n") {
        return Err(format!(
            "answer of {} bytes does not end with # EOF",
            raw.len()
        ));
    }
    Ok(raw.len())
}

impl Scrapers {
    /// `n` threads in `ns`; each stops at `stop` or at `until`, whichever comes first.
    fn start(ns: &Netns, n: usize, until: Instant) -> Scrapers {
        let mut sc = Scrapers {
            stop: Arc::new(AtomicBool::new(false)),
            done: Arc::default(),
            failed: Arc::default(),
            bytes: Arc::default(),
            times: Arc::default(),
            first_error: Arc::default(),
            threads: Vec::new(),
        };
        let api: SocketAddr = "127.0.0.1:7480".parse().expect("address");
        sc.threads = (0..n)
            .map(|_| {
                let (stop, done, failed, bytes, times, first_error) = (
                    sc.stop.clone(),
                    sc.done.clone(),
                    sc.failed.clone(),
                    sc.bytes.clone(),
                    sc.times.clone(),
                    sc.first_error.clone(),
                );
                let name = ns.name.clone();
                std::thread::spawn(move || {
                    let ns = Netns { name };
                    let _in = ns.enter();
                    std::mem::forget(ns); // the namespace belongs to the caller
                    while !stop.load(Relaxed) && Instant::now() < until {
                        let t = Instant::now();
                        match scrape_once(api) {
                            Ok(len) => {
                                bytes.fetch_add(len as u64, Relaxed);
                                times
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .push(t.elapsed().as_micros() as u64);
                                done.fetch_add(1, Relaxed);
                            }
                            Err(e) => {
                                failed.fetch_add(1, Relaxed);
                                first_error
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .get_or_insert(e);
                                // A refused or failing API is not hammered in a tight loop.
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                })
            })
            .collect();
        sc
    }

    fn finish(mut self) -> ScrapeTotals {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let times = std::mem::take(&mut *self.times.lock().unwrap_or_else(|p| p.into_inner()));
        ScrapeTotals {
            done: self.done.load(Relaxed),
            failed: self.failed.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            times_ms: times.iter().map(|us| *us as f64 / 1000.0).collect(),
            first_error: self.first_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

impl Drop for Scrapers {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct ScrapeTotals {
    done: u64,
    failed: u64,
    bytes: u64,
    times_ms: Vec<f64>,
    first_error: Option<String>,
}

/// Waits until the pinned entry of `m` names `server`; returns when it was seen.
fn wait_entry(
    dp: &AyaDataplane,
    m: &ResourceMatch,
    server: u32,
    within: Duration,
) -> Result<Instant, String> {
    let t0 = Instant::now();
    loop {
        match dp.resource(m).map_err(|e| e.to_string())? {
            Some(v) if v.server_id == server => return Ok(Instant::now()),
            v if t0.elapsed() > within => {
                return Err(format!(
                    "the map entry of {m:?} did not name server id {server} within {} ms (it holds {v:?})",
                    within.as_millis()
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// (decisions timed so far, the last one's µs).
fn verdicts(ftn: &Ftn) -> Result<(u64, Option<u64>), String> {
    let st = ftn.try_status()?;
    let n = st["verdicts_applied"]
        .as_u64()
        .ok_or("/v1/status has no verdicts_applied")?;
    Ok((n, st["last_verdict_to_maps_us"].as_u64()))
}

fn block_s0(srv: &Netns, on: bool) -> Result<(), String> {
    let out = if on {
        let rules = format!(
            "add table ip {NFT_TABLE}; add chain ip {NFT_TABLE} input {{ type filter hook input priority 0; }}; add rule ip {NFT_TABLE} input ip daddr {} tcp dport 80 drop",
            nth_v4(SERVER_BASE, 0)
        );
        srv.exec(&["nft", &rules])
    } else {
        srv.exec(&["nft", "delete", "table", "ip", NFT_TABLE])
    };
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft in {}: {}",
            srv.name,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

struct Run {
    verdict_to_maps_ms: f64,
    fault_to_maps_ms: f64,
    scrapes: Option<ScrapeTotals>,
}

struct Ids {
    r0: ResourceMatch,
    s0: u32,
    s1: u32,
}

/// One failover of `s0` (and its failback), with `scrapers` scraping through the failover.
fn run(
    ftn: &Ftn,
    lab: &ServerLab,
    dp: &AyaDataplane,
    ids: &Ids,
    scrapers: usize,
    warmup: Duration,
) -> Result<Run, String> {
    let detect = 2 * (S0_INTERVAL + S0_TIMEOUT) + MARGIN;
    let rise = 3 * (S0_INTERVAL + S0_TIMEOUT) + MARGIN;
    let (before, _) = verdicts(ftn)?;
    let sc = (scrapers > 0)
        .then(|| Scrapers::start(&lab.gw, scrapers, Instant::now() + warmup + detect + MARGIN));
    if let Some(sc) = &sc {
        let t = Instant::now();
        while sc.done.load(Relaxed) < scrapers as u64 && t.elapsed() < warmup {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let fault = Instant::now();
    block_s0(&lab.srv, true)?;
    let seen = wait_entry(dp, &ids.r0, ids.s1, detect);
    let scrapes = sc.map(Scrapers::finish);
    let fault_to_maps_ms = (seen? - fault).as_secs_f64() * 1000.0;
    // The decision is timed when its batch's last write returns; wait for it to show.
    let t = Instant::now();
    let (after, last) = loop {
        let (n, last) = verdicts(ftn)?;
        if n > before || t.elapsed() > MARGIN {
            break (n, last);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    block_s0(&lab.srv, false)?;
    if after != before + 1 {
        return Err(format!(
            "{} decisions were timed during the failover run (expected exactly 1: the failover of s0)",
            after - before
        ));
    }
    if let Some(s) = &scrapes {
        if s.failed > 0 {
            return Err(format!(
                "{} of {} scrapes failed during the run, first: {}",
                s.failed,
                s.failed + s.done,
                s.first_error.as_deref().unwrap_or("?")
            ));
        }
        if s.done == 0 {
            return Err("no scrape finished during the run".into());
        }
    }
    let us = last.ok_or("no last_verdict_to_maps_us after a timed decision")?;
    // Back to the start: s0 answers, the failback reaches the maps and is timed too.
    wait_entry(dp, &ids.r0, ids.s0, rise)?;
    let t = Instant::now();
    while verdicts(ftn)?.0 < after + 1 {
        if t.elapsed() > MARGIN {
            return Err("the failback was not timed".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Run {
        verdict_to_maps_ms: us as f64 / 1000.0,
        fault_to_maps_ms,
        scrapes,
    })
}

fn scrape_delay(lab: &ServerLab, size: Size) -> Result<Figure, String> {
    let (servers, resources, pairs, within, warmup) = match size {
        Size::Quick => (
            100,
            1_000,
            1,
            Duration::from_secs(30),
            Duration::from_secs(10),
        ),
        Size::Full => (
            10_000,
            100_000,
            5,
            Duration::from_secs(180),
            Duration::from_secs(60),
        ),
    };
    let mut ftn = Ftn::new(&lab.gw);
    let s0 = nth_v4(SERVER_BASE, 0);
    let plain =
        format!("name = \"s0\"\naddress = \"{s0}\"\nchecks = [{{ type = \"tcp\", port = 80 }}]\n");
    let text = gateway_config(
        &ftn,
        servers,
        resources,
        "interval = \"10s\"\ntimeout = \"1s\"",
    );
    if !text.contains(&plain) {
        return Err("the generated configuration has no server s0 as expected".into());
    }
    let text = text
        .replacen(
            &plain,
            &format!(
                "name = \"s0\"\naddress = \"{s0}\"\nchecks = [{{ type = \"tcp\", port = 80, interval = \"{}ms\", timeout = \"{}ms\" }}]\n",
                S0_INTERVAL.as_millis(),
                S0_TIMEOUT.as_millis()
            ),
            1,
        )
        .replace(
            "servers = [\"s0\", \"s1\"]\n",
            "servers = [\"s0\", \"s1\"]\nfailback = \"immediate\"\n",
        )
        .replacen(
            "[api]\n",
            "[api]\nmax_connections_per_client = 64\n",
            1,
        );
    ftn.write_config(&text);
    let startup = ftn.start_within(within)?;
    let st = ftn.try_status()?;
    let id_of = |name: &str| -> Result<u32, String> {
        st["servers"]
            .as_array()
            .and_then(|v| v.iter().find(|s| s["name"] == name))
            .and_then(|s| s["id"].as_u64())
            .map(|id| id as u32)
            .ok_or_else(|| format!("no server {name} in the status"))
    };
    let ids = Ids {
        r0: ResourceMatch {
            vip: nth_v4([198, 18, 128, 1], 0).into(),
            protocol: Protocol::Tcp,
            port: 80,
        },
        s0: id_of("s0")?,
        s1: id_of("s1")?,
    };
    drop(st);
    let dp =
        AyaDataplane::adopt(&ftn.pin_dir).map_err(|e| format!("opening the pinned maps: {e}"))?;
    // Every server starts up (the checks' first verdicts) before r0 is on s0.
    wait_entry(&dp, &ids.r0, ids.s0, 3 * Duration::from_secs(11) + MARGIN)?;
    let mut quiet: Vec<Run> = Vec::new();
    let mut loaded: Vec<Run> = Vec::new();
    let log = |e: String| {
        let st = ftn.try_status().unwrap_or_default();
        let find = |list: &str, name: &str| {
            st[list]
                .as_array()
                .and_then(|v| v.iter().find(|x| x["name"] == name).cloned())
                .unwrap_or_default()
        };
        format!(
            "{e}; r0 {}; s0 {}; s1 {}; ftn's log ends: {}",
            find("resources", "r0"),
            find("servers", "s0"),
            find("servers", "s1"),
            crate::ftn::tail(&ftn.log_text(), 5)
        )
    };
    for _ in 0..pairs {
        quiet.push(run(&ftn, lab, &dp, &ids, 0, warmup).map_err(log)?);
        loaded.push(run(&ftn, lab, &dp, &ids, SCRAPERS, warmup).map_err(log)?);
    }
    let v = |runs: &[Run]| {
        runs.iter()
            .map(|r| r.verdict_to_maps_ms)
            .collect::<Vec<_>>()
    };
    let list = |x: &[f64]| {
        x.iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (q, l) = (v(&quiet), v(&loaded));
    let scrapes: Vec<&ScrapeTotals> = loaded.iter().filter_map(|r| r.scrapes.as_ref()).collect();
    let times: Vec<f64> = scrapes
        .iter()
        .flat_map(|s| s.times_ms.iter().copied())
        .collect();
    let total: u64 = scrapes.iter().map(|s| s.done).sum();
    let mb = scrapes.iter().map(|s| s.bytes).sum::<u64>() as f64 / total.max(1) as f64 / 1e6;
    let fault = |runs: &[Run]| runs.iter().map(|r| r.fault_to_maps_ms).collect::<Vec<_>>();
    Ok(Figure::new(
        "scrape_failover_delay_ms",
        median(&l) - median(&q),
        "ms",
        format!(
            "a failover's verdict-to-maps time with {SCRAPERS} clients scraping /metrics in a loop minus without, {resources} resources on {servers} servers{} (ftn run, embedded directory; started in {:.1} s); with scrapers: median {:.1} ms, runs [{}]; without: median {:.1} ms, runs [{}]; fault to maps (includes detection, fall 2 x 100 ms): with [{}], without [{}] ms; {total} scrapes finished during the loaded runs, {mb:.1} MB each, {} ms median, {} ms longest",
            if size == Size::Quick { " (QUICK: scaled down from 100,000 / 10,000)" } else { "" },
            startup.as_secs_f64(),
            median(&l),
            list(&l),
            median(&q),
            list(&q),
            list(&fault(&loaded)),
            list(&fault(&quiet)),
            if times.is_empty() { "n/a".into() } else { format!("{:.0}", median(&times)) },
            times.iter().copied().fold(0.0f64, f64::max).round(),
        ),
    ))
}

/// `scrape_failover_delay_ms` (its own part: `--only scrape`).
pub fn run_scrape(size: Size) -> Vec<Figure> {
    let f = attempt(|| {
        let lab = server_lab()?;
        scrape_delay(&lab, size)
    });
    vec![f.unwrap_or_else(|e| Figure::missing("scrape_failover_delay_ms", "ms", e))]
}
