//! The live gateway high-availability demo (second half of `cargo xtask demo --cluster`): a
//! BIRD 2 router with ECMP and BFD in front of three ftn gateways (each with its own BIRD 2)
//! that share one directory on etcd (`ftn_tests::ha`). Each in its own network namespace.
//!
//! Scenario, with a client opening a new TCP connection every 10 ms and holding a dozen
//! long-lived ones: gateway 2's host dies (links down, ftn and BIRD SIGKILLed) and the clients
//! carry on through the others; it comes back and rejoins; gateway 3 is detached with
//! `ftn detach` (withdraw first). Every figure printed is measured.

use std::time::{Duration, Instant};

use ftn_tests::ha::{bfd_detect, broken_by, ecmp_outage, failed, Ha, SESSIONS_UP};
use ftn_tests::timing::{MARGIN, START};

fn routes(ha: &Ha) -> String {
    let (r, p, b) = ha.paths();
    format!("router -> VIP via gateways {r:?}; primary -> clients via {p:?}; backup -> clients via {b:?}")
}

fn main() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the demo needs root (network namespaces, XDP): run `cargo xtask demo --cluster` as root");
        std::process::exit(2);
    }
    let total = Instant::now();
    println!("== ftn gateway HA demo: client -> BIRD 2 router (ECMP, BFD 50 ms x 3) -> 3 gateways (ftn + BIRD 2, etcd directory) -> primary / backup ==\n");
    let mut ha = Ha::start();
    println!("   {}", routes(&ha));
    println!(
        "   gateway 1's announce table (ip route show table 100):\n     {}",
        ha.announced(1).replace('\n', "\n     ")
    );
    let status = ha.gws[0].cli_ok(&["status"]);
    if let Some(i) = status.find("announce (kernel table") {
        println!(
            "\n`ftn status` on gateway 1 (its announce part):\n{}",
            &status[i..]
        );
    }

    let mut conns = ha.open_spread(4);
    let p = ha.probe(Duration::from_millis(10), Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    println!("-- 1. gateway 2's host dies (links down, ftn and BIRD SIGKILLed)");
    let t0 = p.now();
    ha.kill_host(2);
    let took = ha.wait_route(&[1, 3], bfd_detect() + MARGIN);
    println!(
        "   BFD: the router and the servers dropped gateway 2 {:.0} ms after its death; {}",
        took.as_secs_f64() * 1000.0,
        routes(&ha)
    );
    std::thread::sleep(Duration::from_secs(1));
    let t1 = p.now();
    let through = conns.iter().filter(|c| c.1 == 2).count();
    let (on, off) = broken_by(&mut conns, 2);
    println!(
        "   long-lived connections still answering: {} of {through} that went through gateway 2, {} of {} through the others",
        through - on.len(),
        conns.len() - through - off.len(),
        conns.len() - through
    );
    println!("-- 2. gateway 2 comes back: BIRD and ftn start, ftn announces once its maps hold the directory");
    let t = Instant::now();
    ha.revive_host(2);
    ha.wait_route(&[1, 2, 3], SESSIONS_UP);
    println!(
        "   routed again {:.1} s after the restart began; {}",
        t.elapsed().as_secs_f64(),
        routes(&ha)
    );
    let t2 = p.now();
    println!("-- 3. `systemctl stop ftn && ftn detach` on gateway 3 (withdraw, wait, detach), then its start");
    let out = ha.stop_and_detach(3);
    println!("   {}", out.trim().replace('\n', "\n   "));
    println!("   {}", routes(&ha));
    ha.start_ftn(3);
    ha.wait_route(&[1, 2, 3], START + MARGIN);
    println!("   started again: {}", routes(&ha));
    std::thread::sleep(Duration::from_millis(500));
    let t3 = p.now();
    let s = p.finish();
    println!(
        "\n-- what the client saw (a new connection every 10 ms, spread by the router's ECMP)"
    );
    match ecmp_outage(&s, t0, t1) {
        Ok(d) => println!(
            "   step 1: new connections hashed to the dead gateway failed for {:.0} ms ({} failed probes); the others never stopped",
            d.as_secs_f64() * 1000.0,
            failed(&s, t0, t1)
        ),
        Err(e) => println!("   step 1: {e}"),
    }
    println!(
        "   step 2 (rejoin): {} failed probes; step 3 (detach and start): {} failed probes; long-lived connections broken after all steps: {}",
        failed(&s, t1, t2),
        failed(&s, t2, t3),
        {
            let (a, b) = broken_by(&mut conns, 2);
            a.len() + b.len()
        }
    );
    drop(ha);
    println!(
        "demo done in {:.1} s; lab removed",
        total.elapsed().as_secs_f64()
    );
}
