use super::*;
use crate::dataplane::{Dataplane, MemoryDataplane};
use crate::model::Protocol;
use std::net::IpAddr;
use std::path::Path;

const T0: u64 = 1_000_000;

fn config(failback: &str, extra: &str) -> Arc<Config> {
    let text = format!(
        r#"
[gateway]
interfaces = ["gw0"]

[[server]]
name = "p1"
address = "198.18.2.10"
checks = [{{ type = "tcp", port = 80 }}]

[[server]]
name = "b1"
address = "198.18.3.10"
checks = [{{ type = "tcp", port = 80 }}]

[[resource]]
name = "web"
vip = "198.18.100.1"
protocol = "tcp"
ports = [80, 443]
servers = ["p1", "b1"]
{failback}
drain = "5s"
{extra}
"#
    );
    Arc::new(crate::config::parse(&text, Path::new("test.toml")).expect("test config"))
}

/// Engine + the dataplane it drives, committing plans like the daemon does.
struct Rig {
    engine: Engine,
    dp: MemoryDataplane,
    events: Vec<EventDraft>,
}

impl Rig {
    fn new(cfg: Arc<Config>) -> Rig {
        let mut r = Rig {
            engine: Engine::new(cfg, Snapshot::default()),
            dp: MemoryDataplane::new(),
            events: Vec::new(),
        };
        r.step(T0, None).unwrap();
        r
    }

    fn step(&mut self, now: u64, action: Option<&Action>) -> Result<Plan, ActionError> {
        let plan = self.engine.plan(now, action)?;
        let rev = self.engine.snapshot().revision + 1;
        self.engine.committed(&plan.update, rev);
        self.dp.apply(&plan.changes).map_err(|(_, e)| e).unwrap();
        self.events.extend(plan.update.events.clone());
        Ok(plan)
    }

    fn observe(&mut self, now: u64, server: &str, up: bool) -> Plan {
        self.engine.observe(
            server,
            Observation {
                up,
                evidence: format!("test says {}", if up { "up" } else { "down" }),
                at_ms: now,
            },
        );
        self.step(now, None).unwrap()
    }

    fn current(&self) -> Option<String> {
        self.engine.snapshot().resources["web"].current.clone()
    }

    /// The server id the dataplane sends new flows of web:80 to.
    fn dp_server(&self) -> u32 {
        let m = ResourceMatch {
            vip: "198.18.100.1".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        };
        self.dp.resource(&m).unwrap().server_id
    }

    fn id(&self, server: &str) -> u32 {
        self.engine.snapshot().servers[server].id
    }

    fn dp_up(&self, server: &str) -> bool {
        self.dp.servers[&self.id(server)].state == ftn_common::SERVER_UP
    }
}

#[test]
fn starts_on_the_primary_with_both_ports() {
    let r = Rig::new(config("", ""));
    assert_eq!(r.current().as_deref(), Some("p1"));
    // Ports 80 and 443, and the fragment entry (web is alone on its VIP for tcp), which
    // follows port 80's entry.
    assert_eq!(r.dp.resources.len(), 3);
    let frag =
        r.dp.resource(&ResourceMatch {
            vip: "198.18.100.1".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 0,
        })
        .unwrap();
    assert_eq!(
        frag,
        ftn_common::ResourceValue::fragments(
            r.engine.snapshot().resources["web"].id,
            80u16.to_be()
        )
    );
    assert_eq!(r.dp_server(), r.id("p1"));
    assert!(r.dp_up("p1") && r.dp_up("b1"));
    assert_eq!(r.events.iter().filter(|e| e.kind == "config").count(), 3);
}

#[test]
fn primary_down_fails_over_at_once_and_marks_the_server_down() {
    let mut r = Rig::new(config("", ""));
    let plan = r.observe(T0 + 10, "p1", false);
    assert_eq!(r.current().as_deref(), Some("b1"));
    assert_eq!(r.dp_server(), r.id("b1"));
    assert!(!r.dp_up("p1"), "established flows must leave a down server");
    assert_eq!(plan.moved, vec!["web".to_string()]);
    let ev = r.events.iter().find(|e| e.kind == "failover").unwrap();
    assert!(
        ev.message.contains("p1 -> b1") && ev.message.contains("test says down"),
        "{}",
        ev.message
    );
    // 1 server + 2 resource entries, nothing else rewritten (the fragment entry follows port
    // 80's entry: a failover leaves it alone).
    assert_eq!(plan.changes.len(), 3, "{:?}", plan.changes);
}

#[test]
fn failback_waits_for_the_hold_time() {
    let mut r = Rig::new(config("failback = \"hold\"\nhold = \"10s\"", ""));
    r.observe(T0 + 10, "p1", false);
    r.observe(T0 + 1_000, "p1", true);
    assert_eq!(
        r.current().as_deref(),
        Some("b1"),
        "no failback before the hold time"
    );
    assert!(r.dp_up("p1"));
    assert_eq!(r.engine.next_deadline(), Some(T0 + 11_000));
    assert!(r.step(T0 + 10_999, None).unwrap().moved.is_empty());
    let plan = r.step(T0 + 11_000, None).unwrap();
    assert_eq!(plan.moved, vec!["web".to_string()]);
    assert_eq!(r.current().as_deref(), Some("p1"));
    // b1 stays up in the dataplane: connections opened on it during the failover survive.
    assert!(r.dp_up("b1"));
    assert!(plan
        .changes
        .iter()
        .all(|c| !matches!(c, Change::SetServer { .. })));
    assert!(r
        .events
        .iter()
        .any(|e| e.kind == "failback" && e.message.contains("hold 10s")));
    assert_eq!(r.engine.next_deadline(), None);
}

#[test]
fn default_policy_is_hold() {
    let mut r = Rig::new(config("", ""));
    r.observe(T0 + 10, "p1", false);
    r.observe(T0 + 20, "p1", true);
    assert_eq!(r.current().as_deref(), Some("b1"));
    assert!(r.engine.next_deadline().is_some());
}

#[test]
fn immediate_failback() {
    let mut r = Rig::new(config("failback = \"immediate\"", ""));
    r.observe(T0 + 10, "p1", false);
    r.observe(T0 + 20, "p1", true);
    assert_eq!(r.current().as_deref(), Some("p1"));
}

#[test]
fn manual_failback_waits_for_a_switchover() {
    let mut r = Rig::new(config("failback = \"manual\"", ""));
    r.observe(T0 + 10, "p1", false);
    r.observe(T0 + 20, "p1", true);
    assert!(r.step(T0 + 3_600_000, None).unwrap().moved.is_empty());
    assert_eq!(r.current().as_deref(), Some("b1"));
    assert_eq!(r.engine.next_deadline(), None);
    let sw = Action::Switchover {
        resource: "web".into(),
        to: "p1".into(),
    };
    r.step(T0 + 3_600_001, Some(&sw)).unwrap();
    assert_eq!(r.current().as_deref(), Some("p1"));
    assert_eq!(r.engine.snapshot().resources["web"].pinned, None);
    assert!(r.events.iter().any(|e| e.kind == "switchover"));
}

#[test]
fn switchover_pins_until_the_server_fails() {
    let mut r = Rig::new(config("failback = \"immediate\"", ""));
    let sw = Action::Switchover {
        resource: "web".into(),
        to: "b1".into(),
    };
    r.step(T0 + 5, Some(&sw)).unwrap();
    assert_eq!(r.current().as_deref(), Some("b1"));
    // Immediate failback does not undo the operator's choice.
    assert!(r.step(T0 + 100_000, None).unwrap().moved.is_empty());
    r.observe(T0 + 100_010, "b1", false);
    assert_eq!(r.current().as_deref(), Some("p1"));
    assert_eq!(r.engine.snapshot().resources["web"].pinned, None);
}

#[test]
fn invalid_actions_change_nothing() {
    let mut r = Rig::new(config("", ""));
    let before = r.engine.snapshot().clone();
    let bad = [
        (
            Action::Switchover {
                resource: "nope".into(),
                to: "b1".into(),
            },
            "no resource named \"nope\"",
        ),
        (
            Action::Switchover {
                resource: "web".into(),
                to: "zz".into(),
            },
            "no server named \"zz\"",
        ),
        (
            Action::Drain {
                server: "zz".into(),
            },
            "no server named \"zz\"",
        ),
        (
            Action::Undrain {
                server: "p1".into(),
            },
            "not drained",
        ),
    ];
    for (a, msg) in bad {
        let e = r.engine.plan(T0 + 1, Some(&a)).unwrap_err().to_string();
        assert!(e.contains(msg), "{a:?}: {e}");
    }
    r.observe(T0 + 2, "b1", false);
    let e = r
        .engine
        .plan(
            T0 + 3,
            Some(&Action::Switchover {
                resource: "web".into(),
                to: "b1".into(),
            }),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("b1") && e.contains("down"), "{e}");
    assert_eq!(r.engine.snapshot().resources, before.resources);
}

#[test]
fn drain_moves_new_flows_now_and_cuts_established_ones_after_the_drain_time() {
    let mut r = Rig::new(config("failback = \"immediate\"", ""));
    r.step(
        T0 + 10,
        Some(&Action::Drain {
            server: "p1".into(),
        }),
    )
    .unwrap();
    assert_eq!(r.current().as_deref(), Some("b1"));
    assert!(r.dp_up("p1"), "established flows keep p1 during the drain");
    assert_eq!(r.engine.next_deadline(), Some(T0 + 5_010));
    r.step(T0 + 5_010, None).unwrap();
    assert!(!r.dp_up("p1"), "drain time over: remaining flows move");
    assert_eq!(r.engine.next_deadline(), None);
    let e = r
        .engine
        .plan(
            T0 + 5_011,
            Some(&Action::Drain {
                server: "p1".into(),
            }),
        )
        .unwrap_err();
    assert_eq!(e, ActionError::AlreadyDrained("p1".into()));
    r.step(
        T0 + 6_000,
        Some(&Action::Undrain {
            server: "p1".into(),
        }),
    )
    .unwrap();
    assert!(r.dp_up("p1"));
    assert_eq!(
        r.current().as_deref(),
        Some("p1"),
        "immediate failback after undrain"
    );
}

#[test]
fn no_live_server_then_recovery() {
    let mut r = Rig::new(config("", "on_no_server = \"reject\""));
    r.observe(T0 + 10, "p1", false);
    r.observe(T0 + 20, "b1", false);
    assert_eq!(r.current(), None);
    assert_eq!(r.dp_server(), ftn_common::NO_SERVER);
    let m = ResourceMatch {
        vip: "198.18.100.1".parse().unwrap(),
        protocol: Protocol::Tcp,
        port: 80,
    };
    assert_eq!(
        r.dp.resource(&m).unwrap().flags,
        ftn_common::RES_FLAG_REJECT
    );
    assert!(r.events.iter().any(|e| e.kind == "no-server"));
    // The backup comes back first: served at once (failover, no hold for a resource with nothing).
    r.observe(T0 + 30, "b1", true);
    assert_eq!(r.current().as_deref(), Some("b1"));
    r.observe(T0 + 40, "p1", true);
    assert_eq!(r.current().as_deref(), Some("b1"));
    r.step(T0 + 40 + 10_000, None).unwrap();
    assert_eq!(r.current().as_deref(), Some("p1"));
}

#[test]
fn a_flapping_primary_moves_traffic_once() {
    let mut r = Rig::new(config("", ""));
    let mut moves = 0;
    let mut t = T0;
    for i in 0..100 {
        t += 300; // up/down every 300 ms, well inside the 10 s hold
        moves += r.observe(t, "p1", i % 2 == 1).moved.len();
    }
    assert_eq!(moves, 1, "one failover, no failback while it flaps");
    assert_eq!(r.current().as_deref(), Some("b1"));
}

#[test]
fn reload_applies_only_the_difference() {
    let mut r = Rig::new(config("", ""));
    r.dp.writes = 0;
    let extra = r#"
[[resource]]
name = "dns"
vip = "198.18.100.2"
protocol = "udp"
ports = [53]
servers = ["b1", "p1"]
"#;
    r.engine.set_config(config("", extra));
    let plan = r.step(T0 + 10, None).unwrap();
    // Only additions: established flows need no new check (no RevalidateFlows).
    assert_eq!(r.dp.revalidations, 0);
    // dns:53's resource entry, and the return entries of its two servers (udp 53 -> its VIP),
    // with their fragment entries (port 0: each serves one VIP on udp).
    let returns: Vec<(IpAddr, u16, IpAddr)> = plan
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::SetReturn { matcher, target } => {
                Some((matcher.server, matcher.port, target.vip))
            }
            _ => None,
        })
        .collect();
    let vip: IpAddr = "198.18.100.2".parse().unwrap();
    assert_eq!(
        returns,
        vec![
            ("198.18.2.10".parse().unwrap(), 0, vip),
            ("198.18.2.10".parse().unwrap(), 53, vip),
            ("198.18.3.10".parse().unwrap(), 0, vip),
            ("198.18.3.10".parse().unwrap(), 53, vip)
        ],
        "{:?}",
        plan.changes
    );
    assert_eq!(
        plan.changes.len(),
        6,
        "only dns:53 and its fragment entry are written: {:?}",
        plan.changes
    );
    assert_eq!(
        r.engine.snapshot().resources["dns"].current.as_deref(),
        Some("b1")
    );
    // Change web's ports: 443 removed, 80 rewritten; dns untouched.
    let text_cfg = config("", extra);
    let mut c = (*text_cfg).clone();
    c.resources[0].ports = vec![80];
    r.engine.set_config(Arc::new(c));
    let plan = r.step(T0 + 20, None).unwrap();
    assert!(plan
        .changes
        .iter()
        .any(|c| matches!(c, Change::RemoveResource { matcher } if matcher.port == 443)));
    assert!(plan
        .changes
        .iter()
        .all(|c| !matches!(c, Change::SetResource { matcher, .. } if matcher.port == 53)));
    // A key went: established flows are checked against the maps again, after every write.
    assert_eq!(plan.changes.last(), Some(&Change::RevalidateFlows));
    assert_eq!(r.dp.revalidations, 1);
    assert_eq!(
        r.dp.resources.len(),
        4,
        "web:80, dns:53 and their fragment entries"
    );
    // Remove dns entirely.
    assert_eq!(
        r.dp.returns.len(),
        8,
        "web:80 and dns:53 on p1 and b1, and their tcp and udp fragment entries"
    );
    r.engine.set_config(config("", ""));
    let plan = r.step(T0 + 30, None).unwrap();
    assert_eq!(plan.update.remove_resources, vec!["dns".to_string()]);
    // web is back on 80 and 443; dns's return entries went with it.
    let mut ports: Vec<u16> = r.dp.returns.keys().map(|k| u16::from_be(k.port)).collect();
    ports.sort();
    assert_eq!(ports, vec![0, 0, 80, 80, 443, 443]);
    assert!(!r.engine.snapshot().resources.contains_key("dns"));
}

#[test]
fn a_key_given_to_another_resource_revalidates_established_flows() {
    let mut r = Rig::new(config("", ""));
    // web keeps 80; its 443 goes to a new resource web-tls (same VIP, other server order).
    let mut c = (*config("", "")).clone();
    c.resources[0].ports = vec![80];
    let mut tls = c.resources[0].clone();
    tls.name = "web-tls".into();
    tls.ports = vec![443];
    tls.servers.reverse();
    c.resources.push(tls);
    r.engine.set_config(Arc::new(c));
    let plan = r.step(T0 + 10, None).unwrap();
    assert!(
        !plan
            .changes
            .iter()
            .any(|c| matches!(c, Change::RemoveResource { .. })),
        "443 is rewritten, not removed: {:?}",
        plan.changes
    );
    assert_eq!(plan.changes.last(), Some(&Change::RevalidateFlows));
    assert_eq!(r.dp.revalidations, 1);
}

#[test]
fn a_pinned_resource_has_no_failback_deadline() {
    let mut r = Rig::new(config("failback = \"hold\"\nhold = \"10s\"", ""));
    let sw = Action::Switchover {
        resource: "web".into(),
        to: "b1".into(),
    };
    r.step(T0 + 60_000, Some(&sw)).unwrap();
    assert_eq!(r.current().as_deref(), Some("b1"));
    // p1 has been up far longer than the hold: without the pin this would be a deadline in
    // the past, and the daemon's loop would spin on it.
    assert_eq!(r.engine.next_deadline(), None);
}

#[test]
fn readdressing_the_current_server_rewrites_its_resources() {
    let mut r = Rig::new(config("", ""));
    let old = r.id("p1");
    let mut c = (*config("", "")).clone();
    c.servers[0].address = "198.18.2.11".parse().unwrap();
    r.engine.set_config(Arc::new(c));
    r.step(T0 + 10, None).unwrap();
    assert_ne!(r.id("p1"), old);
    assert_eq!(r.current().as_deref(), Some("p1"));
    assert_eq!(r.dp_server(), r.id("p1"), "web must point to p1's new id");
    assert!(!r.dp.servers.contains_key(&old));
}

#[test]
fn a_new_address_gets_a_new_id() {
    let mut r = Rig::new(config("", ""));
    let old = r.id("b1");
    let mut c = (*config("", "")).clone();
    c.servers[1].address = "198.18.3.11".parse().unwrap();
    r.engine.set_config(Arc::new(c));
    let plan = r.step(T0 + 10, None).unwrap();
    let new = r.id("b1");
    assert_ne!(old, new);
    assert!(plan.changes.contains(&Change::RemoveServer { id: old }));
    assert!(!r.dp.servers.contains_key(&old));
}

#[test]
fn restart_from_the_directory_changes_nothing() {
    let mut r = Rig::new(config("", ""));
    r.observe(T0 + 10, "p1", false);
    let snap = r.engine.snapshot().clone();
    let again = Engine::new(config("", ""), snap);
    let plan = again.plan(T0 + 20, None).unwrap();
    assert!(plan.is_empty(), "{plan:?}");
    assert_eq!(again.recorded_health("p1"), Some(Health::Down));
    // The state a restart writes is what the dataplane already holds.
    let mut dp = r.dp.clone();
    let before = (dp.resources.clone(), dp.servers.clone());
    dp.apply(&again.full_state()).unwrap();
    assert_eq!((dp.resources, dp.servers), before);
}

#[test]
fn a_server_serving_two_vips_on_a_protocol_gets_no_fragment_entry() {
    let extra = r#"
[[resource]]
name = "tls"
vip = "198.18.100.2"
protocol = "tcp"
ports = [8443]
servers = ["b1"]
"#;
    let r = Rig::new(config("", extra));
    let frag = |server: &str| {
        r.dp.returns
            .keys()
            .filter_map(crate::model::ReturnMatch::from_key)
            .any(|m| m.port == 0 && m.server == server.parse::<IpAddr>().unwrap())
    };
    // p1 serves only web's VIP on tcp; b1 serves web's and tls's.
    assert!(frag("198.18.2.10"), "p1: {:?}", r.dp.returns);
    assert!(!frag("198.18.3.10"), "b1: {:?}", r.dp.returns);
}

#[test]
fn a_second_resource_on_the_vip_and_protocol_takes_the_fragment_entry_away() {
    let mut r = Rig::new(config("", ""));
    let frag_key = ResourceMatch {
        vip: "198.18.100.1".parse().unwrap(),
        protocol: Protocol::Tcp,
        port: 0,
    };
    assert!(r.dp.resource(&frag_key).is_some());
    let second = r#"
[[resource]]
name = "ssh"
vip = "198.18.100.1"
protocol = "tcp"
ports = [22]
servers = ["p1"]
"#;
    r.engine.set_config(config("", second));
    let plan = r.step(T0 + 10, None).unwrap();
    assert!(
        plan.changes
            .contains(&Change::RemoveResource { matcher: frag_key }),
        "{:?}",
        plan.changes
    );
    assert_eq!(
        r.dp.resource(&frag_key),
        None,
        "a fragment could be for web or ssh"
    );
    // Alone again: the entry comes back, following web's first port.
    r.engine.set_config(config("", ""));
    let plan = r.step(T0 + 20, None).unwrap();
    assert!(plan
        .changes
        .iter()
        .any(|c| matches!(c, Change::SetFragments { matcher, target } if *matcher == frag_key && target.port == 80)));
    assert!(r.dp.resource(&frag_key).is_some());
}

/// A config of three servers and resources with every failback policy, listing the servers
/// in different orders (so a server is a primary for some resources and a backup for others),
/// each on its own port (a server's port serves one VIP).
fn mixed_config() -> Arc<Config> {
    let mut text = String::from("[gateway]\ninterfaces = [\"gw0\"]\n");
    for (i, s) in ["s0", "s1", "s2"].iter().enumerate() {
        text += &format!(
            "[[server]]\nname = \"{s}\"\naddress = \"198.18.2.{}\"\nchecks = [{{ type = \"tcp\", port = 80 }}]\n",
            10 + i
        );
    }
    let lists = [
        r#"["s0", "s1"]"#,
        r#"["s1", "s0", "s2"]"#,
        r#"["s2", "s1"]"#,
        r#"["s0", "s2", "s1"]"#,
    ];
    let policies = [
        "failback = \"immediate\"",
        "failback = \"hold\"\nhold = \"2s\"",
        "failback = \"manual\"",
    ];
    for i in 0..12 {
        text += &format!(
            "[[resource]]\nname = \"r{i}\"\nvip = \"198.18.100.{}\"\nprotocol = \"tcp\"\nports = [{}]\nservers = {}\n{}\ndrain = \"1s\"\n",
            i + 1,
            1000 + i,
            lists[i % lists.len()],
            policies[i % policies.len()]
        );
    }
    Arc::new(crate::config::parse(&text, Path::new("test.toml")).expect("test config"))
}

/// The incremental plan (only the resources of changed servers and the displaced ones) is
/// the full plan, step after step, through failovers, failbacks after a hold, switchovers,
/// drains and steps with no input at all.
#[test]
fn the_incremental_plan_is_the_full_plan() {
    let mut r = Rig::new(mixed_config());
    let servers = ["s0", "s1", "s2"];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut now = T0;
    let (mut moves, mut incremental) = (0, 0);
    for step in 0..3000 {
        now += next(1500);
        let action = match next(10) {
            0..=3 => {
                let s = servers[next(3) as usize];
                r.engine.observe(
                    s,
                    Observation {
                        up: next(2) == 0,
                        evidence: "test".into(),
                        at_ms: now,
                    },
                );
                None
            }
            4 => Some(Action::Switchover {
                resource: format!("r{}", next(12)),
                to: servers[next(3) as usize].into(),
            }),
            5 => Some(Action::Drain {
                server: servers[next(3) as usize].into(),
            }),
            6 => Some(Action::Undrain {
                server: servers[next(3) as usize].into(),
            }),
            _ => None,
        };
        let full = r.engine.plan_with(now, action.as_ref(), true);
        if !r.engine.full_plan_due() {
            incremental += 1;
        }
        let plan = r.engine.plan(now, action.as_ref());
        assert_eq!(plan, full, "step {step} at {now}: {action:?}");
        let Ok(plan) = plan else { continue };
        moves += plan.moved.len();
        let rev = r.engine.snapshot().revision + 1;
        r.engine.committed(&plan.update, rev);
        r.dp.apply(&plan.changes).map_err(|(_, e)| e).unwrap();
    }
    // The sequence really exercised both: many moves, and plans that were incremental.
    assert!(moves > 500, "only {moves} moves");
    assert!(incremental > 2500, "only {incremental} incremental plans");
}
