//! Network-namespace smoke test of the dataplane: a client, a gateway (ftn's XDP program
//! attached in native mode by the aya `Dataplane`) and two servers, on veth links.
//!
//! - A real TCP connection and a UDP request to the VIP, over IPv4 and IPv6, are answered by
//!   the primary, and the client only ever sees the VIP.
//! - After the resource is switched to the backup in the maps, new connections and requests
//!   reach the backup, while a TCP connection opened before the switch (to the still-healthy
//!   primary) keeps working.
//!
//! ```text
//! client ns            gateway ns                   primary ns / backup ns
//! c0 198.18.1.10 ---- g0 198.18.1.1
//!                     g1 198.18.2.1 ---------------- p0 198.18.2.10
//!                     g2 198.18.3.1 ---------------- b0 198.18.3.10
//! (and 2001:2:1::/64, 2001:2:2::/64, 2001:2:3::/64)   VIPs 198.18.100.1, 2001:2:100::1
//! ```

use std::{net::IpAddr, time::Instant};

use ftn_controller::dataplane::{
    AyaDataplane, AyaOptions, Dataplane, ResourceAssignment, ReturnTarget, ServerEntry,
};
use ftn_controller::model::{NoServerAction, Protocol, ResourceMatch, ReturnMatch, XdpAttachMode};
use ftn_tests::{
    lab::{attach_pass_in, topology, try_in_ns, udp_ask, Conn, Service, Topology, VIP4, VIP6},
    require_root,
};

/// The return entries the controller derives for a resource on TCP 80 and UDP 53 listing
/// `servers` (address, id): their replies are SNATed to `vip` with no per-flow state.
fn returns(dp: &mut AyaDataplane, vip: IpAddr, rid: u32, servers: &[(&str, u32)]) {
    for (addr, id) in servers {
        for (protocol, port) in [(Protocol::Tcp, 80), (Protocol::Udp, 53)] {
            dp.set_return(
                &ReturnMatch {
                    server: addr.parse().unwrap(),
                    protocol,
                    port,
                },
                &ReturnTarget {
                    vip,
                    resource_id: rid,
                    server_id: *id,
                },
            )
            .unwrap();
        }
    }
}

fn assign(dp: &mut AyaDataplane, vip: IpAddr, rid: u32, server: u32) {
    for (proto, port) in [(Protocol::Tcp, 80), (Protocol::Udp, 53)] {
        dp.set_resource(
            &ResourceMatch {
                vip,
                protocol: proto,
                port,
            },
            &ResourceAssignment {
                resource_id: rid,
                server: Some(server),
                generation: 1,
                on_no_server: NoServerAction::Drop,
            },
        )
        .unwrap();
    }
}

#[test]
fn netns_smoke() {
    require_root();
    let started = Instant::now();
    let t = topology();

    // Pass-through XDP on the veth peers so redirected frames are delivered.
    let _pass_c = attach_pass_in(&t.client, "c0");
    let _pass_p = attach_pass_in(&t.primary, "p0");
    let _pass_b = attach_pass_in(&t.backup, "b0");

    let _svc_p = Service::start(&t.primary, "primary");
    let _svc_b = Service::start(&t.backup, "backup");

    // The gateway: load and attach in its namespace (the thread stays there: the Dataplane's
    // interface names resolve in the namespace of the calling thread).
    let _g = t.gateway.enter();
    let mut dp = AyaDataplane::load(&AyaOptions {
        interfaces: vec!["g0".into(), "g1".into(), "g2".into()],
        mode: XdpAttachMode::Native,
        ..AyaOptions::default()
    })
    .expect("load and attach ftn on the gateway");
    for a in dp.attached() {
        println!(
            "attached to {} (ifindex {}) in {} mode",
            a.interface, a.ifindex, a.mode
        );
    }
    let vip4: IpAddr = VIP4.parse().unwrap();
    let vip6: IpAddr = VIP6.parse().unwrap();
    // Servers: 0/1 primary v4/v6, 2/3 backup v4/v6.
    for (id, addr) in [
        (0, "198.18.2.10"),
        (1, "2001:2:2::10"),
        (2, "198.18.3.10"),
        (3, "2001:2:3::10"),
    ] {
        dp.set_server(
            id,
            &ServerEntry {
                addr: addr.parse().unwrap(),
                up: true,
                generation: 1,
            },
        )
        .unwrap();
    }
    assign(&mut dp, vip4, 0, 0);
    assign(&mut dp, vip6, 1, 1);
    returns(&mut dp, vip4, 0, &[("198.18.2.10", 0), ("198.18.3.10", 2)]);
    returns(
        &mut dp,
        vip6,
        1,
        &[("2001:2:2::10", 1), ("2001:2:3::10", 3)],
    );

    // Before the switch: everything reaches the primary; the client sees only the VIP.
    let (long4, long6, before) = in_ns_or_dump(&dp, &t, move || {
        let mut c4 = Conn::open(vip4);
        let mut c6 = Conn::open(vip6);
        let r = (c4.ask(), c6.ask(), udp_ask(vip4), udp_ask(vip6));
        (c4, c6, r)
    });
    println!(
        "before the switch: tcp4 {} tcp6 {} udp4 {:?} udp6 {:?}",
        before.0, before.1, before.2, before.3
    );
    assert_eq!(before.0, "primary", "IPv4 TCP before the switch");
    assert_eq!(before.1, "primary", "IPv6 TCP before the switch");
    assert_eq!(
        before.2,
        ("primary".to_string(), vip4),
        "IPv4 UDP answer must come from the VIP"
    );
    assert_eq!(
        before.3,
        ("primary".to_string(), vip6),
        "IPv6 UDP answer must come from the VIP"
    );

    // Switch both resources to the backup in the maps.
    assign(&mut dp, vip4, 0, 2);
    assign(&mut dp, vip6, 1, 3);

    let after = in_ns_or_dump(&dp, &t, move || {
        let mut long4 = long4;
        let mut long6 = long6;
        let mut n4 = Conn::open(vip4);
        let mut n6 = Conn::open(vip6);
        (
            n4.ask(),
            n6.ask(),
            udp_ask(vip4),
            udp_ask(vip6),
            long4.ask(),
            long6.ask(),
        )
    });
    println!(
        "after the switch: new tcp4 {} new tcp6 {} udp4 {:?} udp6 {:?}; connections opened before: tcp4 {} tcp6 {}",
        after.0, after.1, after.2, after.3, after.4, after.5
    );
    assert_eq!(
        after.0, "backup",
        "new IPv4 TCP connection after the switch"
    );
    assert_eq!(
        after.1, "backup",
        "new IPv6 TCP connection after the switch"
    );
    assert_eq!(
        after.2,
        ("backup".to_string(), vip4),
        "IPv4 UDP after the switch"
    );
    assert_eq!(
        after.3,
        ("backup".to_string(), vip6),
        "IPv6 UDP after the switch"
    );
    assert_eq!(
        after.4, "primary",
        "the IPv4 connection opened before the switch stays on the primary"
    );
    assert_eq!(
        after.5, "primary",
        "the IPv6 connection opened before the switch stays on the primary"
    );

    let stats = dp.global_stats().unwrap();
    let redirected = stats
        .iter()
        .find(|(c, _)| *c == ftn_common::GlobalCounter::Redirect)
        .unwrap()
        .1;
    let r0 = dp.resource_stats(0).unwrap();
    println!("gateway: {redirected} packets redirected by XDP; resource v4: {r0:?}");
    assert!(
        redirected > 0,
        "XDP must have forwarded packets itself (redirect counter is 0)"
    );
    assert!(
        r0.new_flows >= 4 && r0.reply_packets > 0,
        "resource counters: {r0:?}"
    );
    println!("netns smoke test took {:?}", started.elapsed());
}

/// Runs `f` in the client namespace; when it panics, prints the gateway's counters and the
/// namespaces' neighbour tables before failing, so a CI log says where packets went.
fn in_ns_or_dump<T: Send + 'static>(
    dp: &AyaDataplane,
    t: &Topology,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let r = try_in_ns(&t.client, f);
    match r {
        Ok(v) => v,
        Err(_) => {
            for (c, v) in dp.global_stats().unwrap() {
                if v != 0 {
                    eprintln!("gateway counter {} = {v}", c.name());
                }
            }
            for ns in [&t.client, &t.gateway, &t.primary, &t.backup] {
                let out = ftn_tests::run(&["ip", "-n", &ns.name, "neigh"]);
                eprintln!(
                    "neighbours in {}:\n{}",
                    ns.name,
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            panic!("the client failed (see above)");
        }
    }
}
