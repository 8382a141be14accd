//! Packet fixtures: every behaviour of the XDP program, byte for byte, through
//! `BPF_PROG_TEST_RUN`.
//!
//! The program runs inside a private network namespace (so `bpf_fib_lookup` sees a known routing
//! table and static neighbours, never the machine's own), with its maps provisioned through the
//! controller's own `Dataplane` code. Each case gives the map changes it needs, the input frame,
//! the expected action, the expected output frame (built independently with etherparse, which
//! computes every checksum from scratch) and the global counter that must move. Cases run in
//! order and share the flow table, as packets of one gateway do. A mismatch fails the run and
//! prints both frames as hex.
//!
//! One module per feature holds its cases; [`cases`] puts them in the order of the modules
//! below, and later cases rely on the flows and map changes of earlier ones (failover on the
//! forward path's flows, the ICMP error cases on flows of both families, the counters checked
//! after the table on all of them): keep that order.

mod forward_v4;
mod reply;
mod failover;
mod no_server;
mod forward_v6;
mod icmp_errors;
mod passed;
mod passive_health;
mod tcp_state;
mod mtu;
mod pending;
mod fragments;
mod fast_path;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use ftn_common::{
    DataplaneConfig, FlowKey, FlowValue, GlobalCounter, FAMILY_V4, FLOW_FLAG_CLOSING, PROTO_TCP,
};
use ftn_controller::dataplane::{
    AyaDataplane, AyaOptions, Dataplane, FragmentTarget, ResourceAssignment, ReturnTarget,
    ServerEntry,
};
use ftn_controller::model::{ip_words, NoServerAction, Protocol, ResourceMatch, ReturnMatch};
use ftn_tests::frames::{action_name, verify_checksums, BM, CM, G0, G1, G2, PM, R0M, R1M, SCM, XM};
use ftn_tests::{hex, require_root, xdp_md, Netns};

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().unwrap())
}
fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

struct Addrs {
    c4: IpAddr,
    c6: IpAddr,
    sc4: IpAddr,
    p4: IpAddr,
    b4: IpAddr,
    u4: IpAddr,
    x4: IpAddr,
    r0_4: IpAddr,
    r1_4: IpAddr,
    p6: IpAddr,
    b6: IpAddr,
    r0_6: IpAddr,
    vip4: IpAddr,
    vip4_dead: IpAddr,
    vip4_rej: IpAddr,
    vip4_u: IpAddr,
    vip4_x: IpAddr,
    vip6: IpAddr,
    vip6_rej: IpAddr,
    other4: IpAddr,
    /// Servers behind a smaller path MTU (routes `mtu lock 1300` / `mtu 1280`) and their VIPs.
    m4: IpAddr,
    m6: IpAddr,
    vip4_m: IpAddr,
    vip6_m: IpAddr,
    /// The pending-table cases' VIP.
    vip4_p: IpAddr,
}

fn addrs() -> Addrs {
    Addrs {
        c4: v4("198.18.1.10"),
        c6: v6("2001:2:1::10"),
        sc4: v4("198.18.2.50"),
        p4: v4("198.18.2.10"),
        b4: v4("198.18.2.11"),
        u4: v4("198.18.2.99"),
        x4: v4("198.18.3.10"),
        r0_4: v4("198.18.1.254"),
        r1_4: v4("198.18.2.254"),
        p6: v6("2001:2:2::10"),
        b6: v6("2001:2:2::11"),
        r0_6: v6("2001:2:1::fe"),
        vip4: v4("198.18.100.1"),
        vip4_dead: v4("198.18.100.2"),
        vip4_rej: v4("198.18.100.3"),
        vip4_u: v4("198.18.100.4"),
        vip4_x: v4("198.18.100.5"),
        vip6: v6("2001:2:100::1"),
        vip6_rej: v6("2001:2:100::3"),
        other4: v4("198.18.2.77"),
        m4: v4("198.18.2.60"),
        m6: v6("2001:2:2::60"),
        vip4_m: v4("198.18.100.6"),
        vip6_m: v6("2001:2:100::6"),
        vip4_p: v4("198.18.100.7"),
    }
}

// Server ids.
const P4: u32 = 0;
const B4: u32 = 1;
const P6: u32 = 2;
const B6: u32 = 3;
const U4: u32 = 4;
const X4: u32 = 5;
const M4: u32 = 6;
const M6: u32 = 7;

/// MACs of the small-MTU servers.
const MM4: [u8; 6] = [2, 0, 0, 0, 2, 0x60];
const MM6: [u8; 6] = [2, 0, 0, 0, 2, 0x61];

/// The payload of the cases' data segments and datagrams.
const PL: &[u8] = b"hello ftn";

// ---------------------------------------------------------------------------------------------
// Cases.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ingress {
    Fx0,
    Fx1,
}

#[derive(Clone)]
enum Op {
    Server(u32, IpAddr, bool),
    Resource(ResourceMatch, u32, Option<u32>, NoServerAction),
    /// A return entry: the server's (address, protocol, port) -> VIP, resource id, server id.
    Return(ReturnMatch, IpAddr, u32, u32),
    Config(DataplaneConfig),
    RemoveResource(ResourceMatch),
    /// A fragment entry (the matcher's port is 0): resource id, the port it follows.
    Fragments(ResourceMatch, u32, u16),
    /// `Dataplane::revalidate_flows` (a new flow epoch).
    Revalidate,
    /// Insert a flow entry of client -> VIP on `server`, last seen at time 1 ns (long idle).
    AgedFlow {
        client: IpAddr,
        vip: IpAddr,
        sport: u16,
        dport: u16,
        server: u32,
        resource: u32,
    },
}

struct Case {
    name: &'static str,
    setup: Vec<Op>,
    ingress: Ingress,
    input: Vec<u8>,
    action: u32,
    /// `None`: the output must equal the input.
    output: Option<Vec<u8>>,
    counter: GlobalCounter,
    /// When set, the `fast_forward` counter must not move: the case is for the slow path.
    slow: bool,
}

fn m(vip: IpAddr, protocol: Protocol, port: u16) -> ResourceMatch {
    ResourceMatch {
        vip,
        protocol,
        port,
    }
}

fn case(
    name: &'static str,
    ingress: Ingress,
    input: Vec<u8>,
    action: u32,
    output: Option<Vec<u8>>,
    counter: GlobalCounter,
) -> Case {
    Case {
        name,
        setup: Vec::new(),
        ingress,
        input,
        action,
        output,
        counter,
        slow: false,
    }
}

/// `c`, which must not take the fast path.
fn slow(mut c: Case) -> Case {
    c.slow = true;
    c
}

fn with(mut c: Case, setup: Vec<Op>) -> Case {
    c.setup = setup;
    c
}

/// Every case, feature by feature, in the order they run.
fn cases(a: &Addrs) -> Vec<Case> {
    [
        forward_v4::cases,
        reply::cases,
        failover::cases,
        no_server::cases,
        forward_v6::cases,
        icmp_errors::cases,
        passed::cases,
        tcp_state::cases,
        mtu::cases,
        pending::cases,
        fragments::cases,
        fast_path::cases,
    ]
    .iter()
    .flat_map(|f| f(a))
    .collect()
}

// ---------------------------------------------------------------------------------------------
// The lab and the runner.

struct Lab {
    ns: Netns,
    fx0: u32,
    fx1: u32,
}

fn lab() -> Lab {
    let ns = Netns::new("ftfx");
    ns.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
    for (dev, m) in [("fx0", G0), ("fx1", G1), ("fx2", G2)] {
        ns.veth_with_mac(dev, m);
    }
    ns.ip(&["addr", "add", "198.18.1.1/24", "dev", "fx0"]);
    ns.ip(&["addr", "add", "2001:2:1::1/64", "dev", "fx0", "nodad"]);
    ns.ip(&["addr", "add", "198.18.2.1/24", "dev", "fx1"]);
    ns.ip(&["addr", "add", "2001:2:2::1/64", "dev", "fx1", "nodad"]);
    ns.ip(&["addr", "add", "198.18.3.1/24", "dev", "fx2"]);
    for (ip, m, dev) in [
        ("198.18.1.10", CM, "fx0"),
        ("198.18.1.254", R0M, "fx0"),
        ("2001:2:1::10", CM, "fx0"),
        ("2001:2:1::fe", R0M, "fx0"),
        ("198.18.2.10", PM, "fx1"),
        ("198.18.2.11", BM, "fx1"),
        ("198.18.2.50", SCM, "fx1"),
        ("198.18.2.254", R1M, "fx1"),
        ("2001:2:2::10", PM, "fx1"),
        ("2001:2:2::11", BM, "fx1"),
        ("198.18.3.10", XM, "fx2"),
        ("198.18.2.60", MM4, "fx1"),
        ("2001:2:2::60", MM6, "fx1"),
    ] {
        ns.neigh_permanent(ip, m, dev);
    }
    // The small path MTUs. IPv4: a route's MTU, which a forwarding FIB lookup takes only when
    // it is locked. IPv6: fx1's own MTU (the kernel's FIB lookup for BPF answered with the
    // device's MTU for an IPv6 route with `mtu lock 1280`, on 6.18). Every other case's frames
    // are far below both.
    ns.ip(&["link", "set", "fx1", "mtu", "1400"]);
    ns.ip(&[
        "route",
        "add",
        "198.18.2.60/32",
        "dev",
        "fx1",
        "mtu",
        "lock",
        "1300",
    ]);
    let (fx0, fx1) = (ns.ifindex("fx0").unwrap(), ns.ifindex("fx1").unwrap());
    Lab { ns, fx0, fx1 }
}

fn apply(dp: &mut AyaDataplane, op: &Op) {
    match op {
        Op::Server(id, addr, up) => dp
            .set_server(
                *id,
                &ServerEntry {
                    addr: *addr,
                    up: *up,
                    generation: 1,
                },
            )
            .unwrap(),
        Op::Resource(mt, rid, server, act) => dp
            .set_resource(
                mt,
                &ResourceAssignment {
                    resource_id: *rid,
                    server: *server,
                    generation: 1,
                    on_no_server: *act,
                },
            )
            .unwrap(),
        Op::Return(mt, vip, rid, sid) => dp
            .set_return(
                mt,
                &ReturnTarget {
                    vip: *vip,
                    resource_id: *rid,
                    server_id: *sid,
                },
            )
            .unwrap(),
        Op::Config(c) => dp.set_config(c).unwrap(),
        Op::RemoveResource(mt) => dp.remove_resource(mt).unwrap(),
        Op::Fragments(mt, rid, port) => dp
            .set_fragments(
                mt,
                &FragmentTarget {
                    resource_id: *rid,
                    port: *port,
                },
            )
            .unwrap(),
        Op::Revalidate => dp.revalidate_flows().unwrap(),
        Op::AgedFlow {
            client,
            vip,
            sport,
            dport,
            server,
            resource,
        } => {
            let key = FlowKey {
                client: ip_words(*client),
                vip: ip_words(*vip),
                client_port: sport.to_be(),
                vip_port: dport.to_be(),
                proto: PROTO_TCP,
                family: FAMILY_V4,
                _pad: [0; 2],
            };
            let value = FlowValue {
                last_seen_ns: 1,
                server_id: *server,
                resource_id: *resource,
                flags: 0,
                client_seq: 0,
                ..FlowValue::default()
            };
            dp.insert_flow(&key, &value).unwrap();
        }
    }
}

fn provision(dp: &mut AyaDataplane, a: &Addrs) {
    use NoServerAction::*;
    use Protocol::*;
    for (id, addr) in [
        (P4, a.p4),
        (B4, a.b4),
        (P6, a.p6),
        (B6, a.b6),
        (U4, a.u4),
        (X4, a.x4),
        (M4, a.m4),
        (M6, a.m6),
    ] {
        apply(dp, &Op::Server(id, addr, true));
    }
    let res = [
        (m(a.vip4, Tcp, 80), 0, Some(P4), Drop),
        (m(a.vip4, Udp, 53), 1, Some(P4), Drop),
        (m(a.vip4, Tcp, 8080), 2, Some(B4), Drop),
        (m(a.vip4, Icmp, 0), 3, Some(P4), Drop),
        (m(a.vip6, Tcp, 80), 4, Some(P6), Drop),
        (m(a.vip6, Udp, 53), 5, Some(P6), Drop),
        (m(a.vip6, Icmp, 0), 6, Some(P6), Drop),
        (m(a.vip4_dead, Tcp, 80), 7, None, Drop),
        (m(a.vip4_rej, Tcp, 443), 8, None, Reject),
        (m(a.vip4_rej, Udp, 53), 8, None, Reject),
        (m(a.vip4_rej, Icmp, 0), 8, None, Reject),
        (m(a.vip6_rej, Tcp, 443), 9, None, Reject),
        (m(a.vip6_rej, Udp, 53), 9, None, Reject),
        (m(a.vip4_u, Tcp, 80), 10, Some(U4), Drop),
        (m(a.vip4_x, Tcp, 80), 11, Some(X4), Drop),
        (m(a.vip4_m, Tcp, 80), 12, Some(M4), Drop),
        (m(a.vip4_m, Udp, 53), 12, Some(M4), Drop),
        (m(a.vip6_m, Tcp, 80), 13, Some(M6), Drop),
    ];
    for (mt, rid, s, act) in res {
        apply(dp, &Op::Resource(mt, rid, s, act));
    }
    // The return table as the controller derives it: every server of each resource's list
    // (primary and backup), on the resource's protocol and port, to its VIP.
    let ret = |server: IpAddr, protocol: Protocol, port: u16| ReturnMatch {
        server,
        protocol,
        port,
    };
    let returns = [
        (ret(a.p4, Tcp, 80), a.vip4, 0, P4),
        (ret(a.b4, Tcp, 80), a.vip4, 0, B4),
        (ret(a.p4, Udp, 53), a.vip4, 1, P4),
        (ret(a.b4, Udp, 53), a.vip4, 1, B4),
        (ret(a.b4, Tcp, 8080), a.vip4, 2, B4),
        (ret(a.p4, Icmp, 0), a.vip4, 3, P4),
        (ret(a.b4, Icmp, 0), a.vip4, 3, B4),
        (ret(a.p6, Tcp, 80), a.vip6, 4, P6),
        (ret(a.b6, Tcp, 80), a.vip6, 4, B6),
        (ret(a.p6, Udp, 53), a.vip6, 5, P6),
        (ret(a.b6, Udp, 53), a.vip6, 5, B6),
        (ret(a.p6, Icmp, 0), a.vip6, 6, P6),
        (ret(a.b6, Icmp, 0), a.vip6, 6, B6),
        (ret(a.p4, Tcp, 8443), a.vip4, 9, P4),
        (ret(a.b4, Tcp, 8443), a.vip4, 9, B4),
        (ret(a.u4, Tcp, 80), a.vip4_u, 10, U4),
        (ret(a.x4, Tcp, 80), a.vip4_x, 11, X4),
        (ret(a.m4, Tcp, 80), a.vip4_m, 12, M4),
        (ret(a.m4, Udp, 53), a.vip4_m, 12, M4),
        (ret(a.m6, Tcp, 80), a.vip6_m, 13, M6),
        // Fragment entries (port 0): P4 and P6 serve one VIP each on UDP.
        (ret(a.p4, Udp, 0), a.vip4, 1, P4),
        (ret(a.p6, Udp, 0), a.vip6, 5, P6),
    ];
    for (mt, vip, rid, sid) in returns {
        apply(dp, &Op::Return(mt, vip, rid, sid));
    }
}

fn run_prog(prog: &Xdp, ingress: u32, input: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; 4096];
    let ctx = xdp_md(ingress, input.len());
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(input);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    opts.repeat = 1;
    let r = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
    let n = r.data_size_out as usize;
    out.truncate(n);
    (r.return_value, out)
}

/// ftn's program loaded (the calling thread inside the lab's namespace), fx0 and fx1 in the
/// devmap, every server and resource provisioned.
fn gateway(a: &Addrs) -> AyaDataplane {
    let mut dp = AyaDataplane::load(&AyaOptions::default()).expect("load the XDP program");
    dp.add_egress("fx0").unwrap();
    dp.add_egress("fx1").unwrap();
    provision(&mut dp, a);
    dp
}

/// Applies the case's map changes, runs its frame and compares: (the action, the problems).
fn run_case(dp: &mut AyaDataplane, lab: &Lab, c: &Case) -> (u32, Vec<String>) {
    for op in &c.setup {
        apply(dp, op);
    }
    let before = dp.global_stats().unwrap();
    let ingress = match c.ingress {
        Ingress::Fx0 => lab.fx0,
        Ingress::Fx1 => lab.fx1,
    };
    let (action, out) = run_prog(dp.program_mut().unwrap(), ingress, &c.input);
    let after = dp.global_stats().unwrap();
    let expected = c.output.clone().unwrap_or_else(|| c.input.clone());
    let mut problems = Vec::new();
    if action != c.action {
        problems.push(format!(
            "action {} expected {}",
            action_name(action),
            action_name(c.action)
        ));
    }
    if out != expected {
        problems.push(format!(
            "output frame differs\n got ({} bytes):\n{} expected ({} bytes):\n{}",
            out.len(),
            hex(&out),
            expected.len(),
            hex(&expected)
        ));
    }
    if c.output.is_some() {
        if let Err(e) = verify_checksums(&out) {
            problems.push(format!("checksum check (etherparse): {e}"));
        }
    }
    let delta = |g: GlobalCounter| after[g as usize].1 - before[g as usize].1;
    if delta(GlobalCounter::Packets) != 1 {
        problems.push(format!(
            "packets counter moved by {}",
            delta(GlobalCounter::Packets)
        ));
    }
    if c.slow && delta(GlobalCounter::FastForward) != 0 {
        problems.push("the fast path took a packet that is for the slow path".into());
    }
    if delta(c.counter) != 1 {
        let moved: Vec<String> = GlobalCounter::ALL
            .iter()
            .filter(|g| delta(**g) != 0)
            .map(|g| format!("{}+{}", g.name(), delta(*g)))
            .collect();
        problems.push(format!(
            "counter {} moved by {} (moved: {})",
            c.counter.name(),
            delta(c.counter),
            moved.join(", ")
        ));
    }
    (action, problems)
}

/// The counters after the table: per resource and per server, as the cases imply.
fn check_counters(dp: &AyaDataplane, failures: &mut Vec<String>) {
    let web4 = dp.resource_stats(0).unwrap();
    let dead = dp.resource_stats(7).unwrap();
    let rej4 = dp.resource_stats(8).unwrap();
    let b4 = dp.server_stats(B4).unwrap();
    let p4 = dp.server_stats(P4).unwrap();
    let g = dp.global_stats().unwrap();
    println!("web4 {web4:?}\ndead4 {dead:?}\nrej4 {rej4:?}\nP4 {p4:?}\nB4 {b4:?}");
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(format!("counters: {what}"));
        }
    };
    check(
        dead.drop_no_server == 1,
        format!(
            "dead4 drop_no_server = {} (1 expected)",
            dead.drop_no_server
        ),
    );
    check(
        // The drop: fragments' case "to a resource without a live server".
        rej4.reject_no_server == 4 && rej4.drop_no_server == 2,
        format!(
            "rej4 reject/drop = {}/{} (4/2 expected)",
            rej4.reject_no_server, rej4.drop_no_server
        ),
    );
    check(
        web4.flows_moved == 1,
        format!("web4 flows_moved = {} (1 expected)", web4.flows_moved),
    );
    check(
        // failover's flow and fast_path's.
        p4.flows_moved_away == 2,
        format!("P4 flows_moved_away = {} (2 expected)", p4.flows_moved_away),
    );
    check(
        web4.new_flows >= 6,
        format!("web4 new_flows = {} (>= 6 expected)", web4.new_flows),
    );
    check(
        web4.reply_packets >= 1 && b4.reply_packets >= 1,
        format!(
            "reply counters web4 {} B4 {}",
            web4.reply_packets, b4.reply_packets
        ),
    );
    check(
        p4.icmp_errors >= 2,
        format!("P4 icmp_errors = {} (>= 2 expected)", p4.icmp_errors),
    );
    check(
        // The client RST of case "a client RST is forwarded on its flow", and in tcp_state the
        // client's in-window RST; not the blind one, nor the primary's (replies take the
        // stateless return path and leave the flow table alone).
        g[GlobalCounter::FlowsReset as usize].1 == 2,
        format!(
            "flows_reset = {} (2 expected)",
            g[GlobalCounter::FlowsReset as usize].1
        ),
    );
    check(
        g[GlobalCounter::FlowsMoved as usize].1 == 3,
        format!(
            "flows_moved = {} (3 expected: failover's two and fast_path's)",
            g[GlobalCounter::FlowsMoved as usize].1
        ),
    );
    check(
        // The five of icmp_errors' v4 and v6 cases and the one in a frame with a trailer.
        g[GlobalCounter::IcmpErrorTranslated as usize].1 == 6,
        format!(
            "icmp_error_translated = {} (6 expected)",
            g[GlobalCounter::IcmpErrorTranslated as usize].1
        ),
    );
}

#[test]
fn packet_fixtures() {
    require_root();
    let a = addrs();
    let lab = lab();
    let _inside = lab.ns.enter();
    let mut dp = gateway(&a);
    let cases = cases(&a);
    assert!(
        cases.len() >= 40,
        "the table must hold at least 40 cases, has {}",
        cases.len()
    );

    let mut failures = Vec::new();
    let mut counted: std::collections::HashMap<&'static str, u64> = Default::default();
    for (i, c) in cases.iter().enumerate() {
        let (action, problems) = run_case(&mut dp, &lab, c);
        *counted.entry(c.counter.name()).or_default() += 1;
        let status = if problems.is_empty() { "ok  " } else { "FAIL" };
        println!(
            "[{status}] {:2} {} -> {}",
            i + 1,
            c.name,
            action_name(action)
        );
        if !problems.is_empty() {
            failures.push(format!(
                "case {} '{}':\n  {}",
                i + 1,
                c.name,
                problems.join("\n  ")
            ));
        }
    }

    check_counters(&dp, &mut failures);

    // The flow table holds what the cases created: the RSTed flow is gone.
    let flows = dp.flows().unwrap();
    let rst_gone = !flows
        .iter()
        .any(|(k, v)| u16::from_be(k.client_port) == 40001 && v.server_id == B4);
    if !rst_gone {
        failures.push("the RSTed flow 40001 -> B4 is still in the flow table".into());
    }
    // tcp_state's flows on VIP:8443, by client port: (server, closing), in the flow table or
    // the pending one (a flow that sent one packet).
    let pending = dp.pending_flows().unwrap();
    let flow_8443 = |port: u16| {
        flows
            .iter()
            .chain(pending.iter())
            .find(|(k, _)| u16::from_be(k.client_port) == port && u16::from_be(k.vip_port) == 8443)
            .map(|(_, v)| (v.server_id, v.flags & FLOW_FLAG_CLOSING != 0))
    };
    // A client's RST moves a flow to closing and keeps it (on its server): the held flow is
    // there, closing; the blind RST before did not re-pin it. The server's RST left its flow as
    // it was (open, on the primary): the reply path does not read or write the flow table.
    for (port, want) in [
        (tcp_state::HELD, (B4, true)),
        (tcp_state::SERVER_RESET, (P4, false)),
    ] {
        let got = flow_8443(port);
        if got != Some(want) {
            failures.push(format!(
                "flow {port} -> 8443: (server, closing) {got:?}, {want:?} expected"
            ));
        }
    }
    println!(
        "{} cases, {} flows in the table, counters by case: {counted:?}",
        cases.len(),
        flows.len()
    );
    drop(dp);
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Passive health: SYNs left unanswered and RSTs in a row are reported through the ring
/// buffer; any other answer from the server clears the record.
#[test]
fn passive_health_reports() {
    require_root();
    let a = addrs();
    let lab = lab();
    let _inside = lab.ns.enter();
    passive_health::run(&a, &lab, gateway(&a));
}
