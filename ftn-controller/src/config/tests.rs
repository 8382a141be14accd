use ftn_common::MAX_SERVERS;

use super::*;
use crate::model::{Failback, NoServerAction, Protocol, XdpAttachMode, DEFAULT_PIN_DIR};

const PATH: &str = "ftn.toml";

fn ok(text: &str) -> Config {
    match parse(text, Path::new(PATH)) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid configuration, got:\n{e}"),
    }
}

fn err(text: &str) -> ConfigError {
    match parse(text, Path::new(PATH)) {
        Ok(c) => panic!("expected an error, got {c:#?}"),
        Err(e) => e,
    }
}

/// 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    let off = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    line_col(text, off).0
}

/// The only problem of `text`, checked to mention `message` at the line of `at`.
fn single(text: &str, field: &str, message: &str, at: &str) -> Problem {
    let e = err(text);
    assert_eq!(e.problems.len(), 1, "expected one problem, got:\n{e}");
    let p = e.problems[0].clone();
    assert_eq!(p.field, field, "{e}");
    assert!(
        p.message.contains(message),
        "{:?} lacks {message:?}",
        p.message
    );
    assert_eq!(p.line, Some(line_of(text, at)), "{e}");
    p
}

const GATEWAY: &str = "[gateway]\ninterfaces = [\"eth0\"]\n";

fn with_gateway(rest: &str) -> String {
    format!("{GATEWAY}{rest}")
}

const FULL: &str = r#"
[gateway]
interfaces = ["eth0", "eth1"]
xdp_mode = "native"
pin_dir = "/sys/fs/bpf/ftn-test"
flow_table = 65536
pending_table = 4096

[api]
listen = "[::1]:9000"
token = "s3cret"

[directory]
backend = "embedded"
path = "/var/lib/ftn-test"

[dataplane]
tcp_idle = "10m"
udp_idle = "2m"

[check_defaults]
interval = "100ms"
timeout = "80ms"
rise = 4

[[server]]
name = "p1"
address = "198.18.2.10"
checks = [
  { type = "tcp", port = 80 },
  { type = "http", port = 8080, path = "/health", host = "web.example", expect_status = 204, interval = "200ms", timeout = "150ms", fall = 5 },
]

[[server]]
name = "b1"
address = "198.18.3.10"

[[server]]
name = "dns1"
address = "198.18.2.53"
checks = [{ type = "udp", port = 53, send = "hello", expect = "olleh" }]

[[server]]
name = "dns2"
address = "198.18.3.53"

[[server]]
name = "spare"
address = "198.18.3.99"

[[server]]
name = "v6a"
address = "2001:2::10"
checks = [{ type = "icmp", rise = 1 }]

[[resource]]
name = "web"
vip = "198.18.100.1"
protocol = "tcp"
ports = [80]
servers = ["p1", "b1"]
failback = "immediate"
drain = "5s"
on_no_server = "reject"

[[resource]]
name = "dns"
vip = "198.18.100.1"
protocol = "udp"
ports = [53]
servers = ["dns1", "dns2"]

[[resource]]
name = "ping6"
vip = "2001:2::100"
protocol = "icmp"
servers = ["v6a"]
failback = "hold"
hold = "1m"

[[resource]]
name = "web-manual"
vip = "198.18.100.2"
protocol = "tcp"
ports = [443, 8443]
servers = ["p1"]
failback = "manual"
"#;

#[test]
fn full_example_parses_with_values_and_defaults() {
    let c = ok(FULL);
    assert_eq!(c.source, PathBuf::from(PATH));
    assert_eq!(
        c.gateway,
        GatewayConfig {
            name: default_gateway_name(),
            interfaces: vec!["eth0".into(), "eth1".into()],
            xdp_mode: XdpAttachMode::Native,
            pin_dir: "/sys/fs/bpf/ftn-test".into(),
            flow_table: 65536,
            pending_table: 4096,
        }
    );
    assert_eq!(c.api.listen, "[::1]:9000".parse().unwrap());
    assert_eq!(c.api.token.as_deref(), Some("s3cret"));
    assert_eq!(
        c.directory,
        DirectoryConfig::Embedded {
            path: "/var/lib/ftn-test".into()
        }
    );
    assert_eq!(c.dataplane.tcp_idle_ns, 600_000_000_000);
    assert_eq!(c.dataplane.udp_idle_ns, 120_000_000_000);
    assert_eq!(
        c.dataplane.tcp_closing_ns,
        ftn_common::DEFAULT_TCP_CLOSING_NS
    );
    assert_eq!(c.dataplane.icmp_idle_ns, ftn_common::DEFAULT_ICMP_IDLE_NS);

    let names = c
        .servers
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>();
    assert_eq!(names, ["p1", "b1", "dns1", "dns2", "spare", "v6a"]);
    let ms = Duration::from_millis;
    let p1 = c.server("p1").unwrap();
    assert_eq!(p1.address, "198.18.2.10".parse::<IpAddr>().unwrap());
    assert_eq!(
        p1.checks,
        vec![
            CheckConfig {
                kind: CheckKind::Tcp { port: 80 },
                interval: ms(100),
                timeout: ms(80),
                rise: 4,
                fall: 2,
            },
            CheckConfig {
                kind: CheckKind::Http {
                    port: 8080,
                    path: "/health".into(),
                    host: Some("web.example".into()),
                    expect_status: 204,
                },
                interval: ms(200),
                timeout: ms(150),
                rise: 4,
                fall: 5,
            },
        ]
    );
    // Derived checks: b1 serves only tcp/80 -> tcp 80; dns2 serves udp -> icmp; spare serves
    // nothing -> icmp. They use [check_defaults].
    let derived = |kind| CheckConfig {
        kind,
        interval: ms(100),
        timeout: ms(80),
        rise: 4,
        fall: 2,
    };
    assert_eq!(
        c.server("b1").unwrap().checks,
        vec![derived(CheckKind::Tcp { port: 80 })]
    );
    assert_eq!(
        c.server("dns2").unwrap().checks,
        vec![derived(CheckKind::Icmp)]
    );
    assert_eq!(
        c.server("spare").unwrap().checks,
        vec![derived(CheckKind::Icmp)]
    );
    assert_eq!(
        c.server("dns1").unwrap().checks[0].kind,
        CheckKind::Udp {
            port: 53,
            send: b"hello".to_vec(),
            expect: Some(b"olleh".to_vec())
        }
    );
    assert_eq!(c.server("v6a").unwrap().checks[0].kind, CheckKind::Icmp);
    assert_eq!(c.server("v6a").unwrap().checks[0].rise, 1);

    let names = c
        .resources
        .iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>();
    assert_eq!(names, ["web", "dns", "ping6", "web-manual"]);
    assert_eq!(
        *c.resource("web").unwrap(),
        ResourceConfig {
            name: "web".into(),
            vip: "198.18.100.1".parse().unwrap(),
            protocol: Protocol::Tcp,
            ports: vec![80],
            servers: vec!["p1".into(), "b1".into()],
            failback: Failback::Immediate,
            drain: Duration::from_secs(5),
            on_no_server: NoServerAction::Reject,
            withdraw_without_server: true,
            fragments: true,
        }
    );
    // Alone on its (VIP, protocol): tcp "web" and udp "dns" share a VIP but not a protocol.
    let fragments = |n: &str| c.resource(n).unwrap().fragment_matcher();
    assert_eq!(
        fragments("dns"),
        Some(ResourceMatch {
            vip: "198.18.100.1".parse().unwrap(),
            protocol: Protocol::Udp,
            port: 0
        })
    );
    assert_eq!(fragments("ping6"), None, "icmp has no fragment entry");
    assert!(fragments("web-manual").is_some());
    let dns = c.resource("dns").unwrap();
    assert_eq!(dns.failback, Failback::Hold(Duration::from_secs(10)));
    assert_eq!(dns.drain, Duration::from_secs(30));
    assert_eq!(dns.on_no_server, NoServerAction::Drop);
    let ping6 = c.resource("ping6").unwrap();
    assert_eq!(ping6.failback, Failback::Hold(Duration::from_secs(60)));
    assert!(ping6.ports.is_empty());
    assert_eq!(
        ping6.matchers(),
        vec![ResourceMatch {
            vip: "2001:2::100".parse().unwrap(),
            protocol: Protocol::Icmp,
            port: 0
        }]
    );
    let manual = c.resource("web-manual").unwrap();
    assert_eq!(manual.failback, Failback::Manual);
    assert_eq!(manual.ports, vec![443, 8443]);
    assert_eq!(manual.matchers().len(), 2);
    assert!(c.resource("nope").is_none() && c.server("nope").is_none());
}

#[test]
fn minimal_file_gets_builtin_defaults() {
    let c = ok(&with_gateway(
        "[[server]]\nname = \"a\"\naddress = \"198.18.2.1\"\nchecks = [{ type = \"tcp\", port = 22 }]\n",
    ));
    assert_eq!(c.gateway.xdp_mode, XdpAttachMode::Auto);
    assert_eq!(c.gateway.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
    assert_eq!(c.api, ApiConfig::default());
    assert_eq!(c.api.listen, "127.0.0.1:7480".parse().unwrap());
    assert_eq!(c.api.token, None);
    assert_eq!(
        c.directory,
        DirectoryConfig::Embedded {
            path: "/var/lib/ftn".into()
        }
    );
    assert_eq!(c.dataplane, DataplaneConfig::default());
    assert!(c.resources.is_empty());
    let check = &c.servers[0].checks[0];
    assert_eq!(
        (check.interval, check.timeout, check.rise, check.fall),
        (Duration::from_secs(1), Duration::from_millis(50), 3, 2)
    );
}

#[test]
fn passive_settings() {
    let c = ok(&with_gateway(
        "[dataplane]\npassive_window = \"5ms\"\npassive_min = 2\npassive_rearm = \"1s\"\n",
    ));
    assert_eq!(c.dataplane.passive_window_ns, 5_000_000);
    assert_eq!(c.dataplane.passive_min, 2);
    assert_eq!(c.dataplane.passive_rearm_ns, 1_000_000_000);
    let c = ok(&with_gateway(
        "[dataplane]\npassive = false\nnexthop_cache = false\n",
    ));
    assert_eq!(c.dataplane.passive_min, ftn_common::PASSIVE_OFF);
    assert_eq!(c.dataplane.nexthop_ttl_ns, ftn_common::NEXTHOP_CACHE_OFF);
    let c = ok(&with_gateway("[dataplane]\nnexthop_ttl = \"250ms\"\n"));
    assert_eq!(c.dataplane.nexthop_ttl_ns, 250_000_000);
    let text = with_gateway("[dataplane]\npassive_min = 0\npassive = \"yes\"\n");
    let e = err(&text).to_string();
    assert!(
        e.contains("[dataplane].passive_min: must be between 1 and 1000000, got 0")
            || e.contains("passive_min: must be between 1 and 1000000, got 0"),
        "{e}"
    );
    assert!(e.contains("passive") && e.contains("true or false"), "{e}");
}

#[test]
fn default_check_derivation() {
    let text = with_gateway(
        r#"
[[server]]
name = "a"
address = "198.18.2.1"
[[server]]
name = "b"
address = "198.18.2.2"
[[server]]
name = "c"
address = "198.18.2.3"
[[resource]]
name = "r1"
vip = "198.18.100.1"
protocol = "tcp"
ports = [8443]
servers = ["a", "b", "c"]
[[resource]]
name = "r3"
vip = "198.18.100.3"
protocol = "tcp"
ports = [80]
servers = ["b"]
[[resource]]
name = "r4"
vip = "198.18.100.4"
protocol = "udp"
ports = [8443]
servers = ["c"]
"#,
    );
    let c = ok(&text);
    let kind = |s: &str| c.server(s).unwrap().checks[0].kind.clone();
    // a: tcp 8443 -> tcp 8443; b: tcp on two ports -> icmp; c: tcp + udp -> icmp.
    assert_eq!(kind("a"), CheckKind::Tcp { port: 8443 });
    assert_eq!(kind("b"), CheckKind::Icmp);
    assert_eq!(kind("c"), CheckKind::Icmp);
    assert!(c.servers.iter().all(|s| s.checks.len() == 1));
}

#[test]
fn unknown_field_is_reported_with_line_and_expected_fields() {
    let text = with_gateway("[[server]]\nname = \"p1\"\nadress = \"198.18.2.10\"\n");
    let e = err(&text);
    let unknown = e
        .problems
        .iter()
        .find(|p| p.field == "server \"p1\".adress")
        .unwrap_or_else(|| panic!("{e}"));
    assert_eq!(unknown.line, Some(5));
    assert_eq!(unknown.column, Some(1));
    assert_eq!(
        unknown.message,
        "unknown field `adress`, expected one of `name`, `address`, `checks` (did you mean `address`?)"
    );
    // The required field is missing too: both are reported.
    assert!(e
        .problems
        .iter()
        .any(|p| p.message == "missing field `address` in server \"p1\""));

    let p = single(
        "[gateway]\ninterfaces = [\"eth0\"]\nmode = \"native\"\n",
        "gateway.mode",
        "unknown field `mode`, expected one of `name`, `interfaces`, `xdp_mode`, `pin_dir`",
        "mode =",
    );
    assert_eq!(p.column, Some(1));
    single(
        &with_gateway("[servers]\nname = \"x\"\n"),
        "servers",
        "unknown field `servers`, expected one of `gateway`, `api`, `directory`, `dataplane`, `check_defaults`, `announce`, `server`, `resource` (did you mean `server`?)",
        "[servers]",
    );
    single(
        &with_gateway("[[server]]\nname = \"a\"\naddress = \"198.18.2.1\"\nchecks = [{ type = \"tcp\", port = 80, path = \"/\" }]\n"),
        "server \"a\".checks[0].path",
        "`path` is not a field of a tcp check (only of http checks)",
        "checks =",
    );
}

#[test]
fn wrong_types_are_reported() {
    single(
        "[gateway]\ninterfaces = \"eth0\"\n",
        "gateway.interfaces",
        "expected an array, found a string (\"eth0\")",
        "interfaces",
    );
    single(
        &with_gateway("[server]\nname = \"a\"\n"),
        "server",
        "`server` is a list of tables: write [[server]], not [server]",
        "[server]",
    );
    single(
        &with_gateway("[[server]]\nname = \"a\"\naddress = 1979-05-27\n"),
        "server \"a\".address",
        "expected a string, found a datetime (1979-05-27)",
        "address",
    );
    single(
        &with_gateway("[[server]]\nname = \"a\"\naddress = \"198.18.2.1\"\nchecks = [{ type = \"tcp\", port = \"80\" }]\n"),
        "server \"a\".checks[0].port",
        "expected an integer, found a string (\"80\")",
        "checks",
    );
}

#[test]
fn dotted_keys_and_inline_tables_are_read() {
    // Tables made implicitly by dotted keys have no span of their own.
    let c = ok("gateway.interfaces = [\"eth0\"]\napi = { listen = \"127.0.0.1:9999\" }\n");
    assert_eq!(c.gateway.interfaces, ["eth0"]);
    assert_eq!(c.api.listen.port(), 9999);
    let e = err("gateway.interfaces = [\"eth0\"]\ngateway.bogus = 1\n");
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(e.problems[0].line, Some(2));
    assert_eq!(e.problems[0].field, "gateway.bogus");
}

const TWO_SERVERS: &str = r#"
[[server]]
name = "p1"
address = "198.18.2.10"
[[server]]
name = "b1"
address = "198.18.3.10"
"#;

fn resource(name: &str, vip: &str, proto: &str, ports: &str, servers: &str) -> String {
    format!(
        "[[resource]]\nname = \"{name}\"\nvip = \"{vip}\"\nprotocol = \"{proto}\"\n{ports}servers = {servers}\n"
    )
}

#[test]
fn a_vip_that_is_a_servers_address_is_refused() {
    // Another resource's server.
    let text = with_gateway(&format!(
        "{TWO_SERVERS}{}",
        resource("web", "198.18.3.10", "tcp", "ports = [80]\n", "[\"p1\"]"),
    ));
    let e = single(
        &text,
        "resource \"web\".vip",
        "VIP 198.18.3.10 is also the address of server \"b1\"",
        "vip = \"198.18.3.10\"",
    );
    assert!(
        e.message.contains(&format!(
            "(line {})",
            line_of(&text, "address = \"198.18.3.10\"")
        )),
        "{e:?}"
    );
    // Its own server.
    let text = with_gateway(&format!(
        "{TWO_SERVERS}{}",
        resource(
            "web",
            "198.18.2.10",
            "tcp",
            "ports = [80]\n",
            "[\"p1\", \"b1\"]"
        ),
    ));
    single(
        &text,
        "resource \"web\".vip",
        "VIP 198.18.2.10 is also the address of server \"p1\"",
        "vip = \"198.18.2.10\"",
    );
}

#[test]
fn a_check_interval_beyond_an_hour_is_refused() {
    let text = with_gateway(
        "[[server]]\nname = \"a\"\naddress = \"198.18.2.10\"\nchecks = [{ type = \"tcp\", port = 80, interval = \"5000000000h\" }]\n",
    );
    let e = err(&text);
    assert!(
        e.problems
            .iter()
            .any(|p| p.field == "server \"a\".checks[0].interval"
                && p.message.starts_with("interval ")
                && p.message.contains("is too long: at most 1h")),
        "{e}"
    );
    let text_ok = with_gateway(
        "[[server]]\nname = \"a\"\naddress = \"198.18.2.10\"\nchecks = [{ type = \"tcp\", port = 80, interval = \"1h\" }]\n",
    );
    let c = ok(&text_ok);
    assert_eq!(c.servers[0].checks[0].interval, Duration::from_secs(3600));
}

/// Every duration has an upper bound; each refusal names its field.
#[test]
fn every_duration_is_bounded() {
    let text = with_gateway(&format!(
        "{TWO_SERVERS}{}[dataplane]\ntcp_idle = \"31days\"\npassive_window = \"2m\"\nnexthop_ttl = \"5000000000h\"\n",
        resource(
            "web",
            "198.18.1.1",
            "tcp",
            "ports = [80]\nfailback = \"hold\"\nhold = \"8days\"\ndrain = \"5000000000h\"\n",
            "[\"p1\", \"b1\"]"
        ),
    ));
    let e = err(&text);
    for (field, max) in [
        ("dataplane.tcp_idle", "at most 30days"),
        ("dataplane.passive_window", "at most 1m"),
        ("dataplane.nexthop_ttl", "at most 1h"),
        ("resource \"web\".hold", "at most 7days"),
        ("resource \"web\".drain", "at most 7days"),
    ] {
        assert!(
            e.problems
                .iter()
                .any(|p| p.field == field && p.message.contains(max)),
            "{field}: {e}"
        );
    }
    assert_eq!(e.problems.len(), 5, "{e}");
    let ok_text = with_gateway(&format!(
        "{TWO_SERVERS}{}[dataplane]\ntcp_idle = \"30days\"\n",
        resource(
            "web",
            "198.18.1.1",
            "tcp",
            "ports = [80]\nfailback = \"hold\"\nhold = \"7days\"\ndrain = \"7days\"\n",
            "[\"p1\", \"b1\"]"
        ),
    ));
    ok(&ok_text);
}

#[test]
fn duplicate_vip_names_both_resources() {
    let text = with_gateway(&format!(
        "{TWO_SERVERS}{}{}",
        resource(
            "web",
            "198.18.100.1",
            "tcp",
            "ports = [80, 443]\n",
            "[\"p1\"]"
        ),
        resource(
            "web2",
            "198.18.100.1",
            "tcp",
            "ports = [8080, 443]\n",
            "[\"b1\"]"
        ),
    ));
    let e = single(
        &text,
        "resource \"web2\".ports[1]",
        "duplicate VIP: tcp port 443 of VIP 198.18.100.1 already belongs to resource \"web\"",
        "ports = [8080",
    );
    assert!(e
        .message
        .contains(&format!("(line {})", line_of(&text, "[[resource]]"))));
    assert_eq!(
        e.column,
        Some(line_col(&text, text.find("443]\nservers = [\"b1").unwrap()).1)
    );
}

#[test]
fn same_vip_with_other_protocol_or_port_is_fine() {
    let text = with_gateway(&format!(
        "{TWO_SERVERS}{}{}{}{}",
        resource("a", "198.18.100.1", "tcp", "ports = [80]\n", "[\"p1\"]"),
        resource("b", "198.18.100.1", "udp", "ports = [80]\n", "[\"p1\"]"),
        resource("c", "198.18.100.1", "tcp", "ports = [81]\n", "[\"b1\"]"),
        resource("d", "198.18.100.1", "icmp", "", "[\"b1\"]"),
    ));
    assert_eq!(ok(&text).resources.len(), 4);
}

#[test]
fn icmp_twice_on_one_vip_is_a_duplicate() {
    let text = with_gateway(&format!(
        "{TWO_SERVERS}{}{}",
        resource("ping", "198.18.100.1", "icmp", "", "[\"p1\"]"),
        resource("ping2", "198.18.100.1", "icmp", "ports = []\n", "[\"b1\"]"),
    ));
    single(
        &text,
        "resource \"ping2\".vip",
        "duplicate VIP: icmp on VIP 198.18.100.1 already belongs to resource \"ping\"",
        "vip = \"198.18.100.1\"\nprotocol = \"icmp\"\nports",
    );
}

#[test]
fn unknown_server_is_named_with_the_known_ones() {
    let text = with_gateway(&format!(
        "{TWO_SERVERS}{}",
        resource(
            "web",
            "198.18.100.1",
            "tcp",
            "ports = [80]\n",
            "[\"p1\", \"b1\", \"p9\"]"
        )
    ));
    let e = err(&text);
    let line = line_of(&text, "\"p9\"");
    let col = line_col(&text, text.find("\"p9\"").unwrap()).1;
    assert_eq!(
        e.to_string(),
        format!("ftn.toml:{line}:{col}: resource \"web\".servers[2]: unknown server \"p9\" (known: p1, b1)")
    );
    let e = err(&with_gateway(&resource(
        "web",
        "198.18.100.1",
        "tcp",
        "ports = [80]\n",
        "[\"x\"]",
    )));
    assert_eq!(
        e.problems[0].message,
        "unknown server \"x\" (no [[server]] is defined)"
    );
}

#[test]
fn bad_address_says_what_was_given() {
    let text = with_gateway("[[server]]\nname = \"a\"\naddress = \"198.18.2.300\"\n");
    let p = single(
        &text,
        "server \"a\".address",
        "invalid IP address \"198.18.2.300\": expected an IPv4 or IPv6 address",
        "address",
    );
    assert_eq!(p.column, Some(11));
    single(
        &with_gateway("[[server]]\nname = \"a\"\naddress = \"198.18.2.3:80\"\n"),
        "server \"a\".address",
        "(write the address alone: ports belong to checks and resources)",
        "address",
    );
}

#[test]
fn special_addresses_are_refused() {
    for (addr, what) in [
        ("0.0.0.0", "the unspecified address"),
        ("::", "the unspecified address"),
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("224.0.0.5", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("255.255.255.255", "the broadcast address"),
        ("::ffff:198.18.2.1", "an IPv4-mapped IPv6 address"),
    ] {
        single(
            &with_gateway(&format!("[[server]]\nname = \"a\"\naddress = \"{addr}\"\n")),
            "server \"a\".address",
            &format!("is {what}; it cannot be a server address"),
            "address",
        );
        single(
            &with_gateway(&format!(
                "{TWO_SERVERS}{}",
                resource("r", addr, "icmp", "", "[\"p1\"]")
            )),
            "resource \"r\".vip",
            &format!("is {what}; it cannot be a VIP"),
            "vip",
        );
    }
}

#[test]
fn duplicate_server_names_and_addresses() {
    let text = with_gateway(
        "[[server]]\nname = \"a\"\naddress = \"198.18.2.1\"\n[[server]]\nname = \"a\"\naddress = \"198.18.2.2\"\n[[server]]\nname = \"b\"\naddress = \"198.18.2.1\"\n",
    );
    let e = err(&text);
    assert_eq!(e.problems.len(), 2, "{e}");
    assert_eq!(e.problems[0].field, "server \"a\".name");
    assert_eq!(
        e.problems[0].message,
        "duplicate server name \"a\": already defined (line 4)"
    );
    assert_eq!(e.problems[0].line, Some(7));
    assert_eq!(e.problems[1].field, "server \"b\".address");
    assert_eq!(
        e.problems[1].message,
        "address 198.18.2.1 is already the address of server \"a\" (line 5)"
    );
    assert_eq!(e.problems[1].line, Some(11));
}

#[test]
fn primary_listed_twice_is_refused() {
    let text = with_gateway(&format!(
        "{TWO_SERVERS}{}",
        resource(
            "web",
            "198.18.100.1",
            "tcp",
            "ports = [80]\n",
            "[\"p1\", \"b1\", \"p1\"]"
        )
    ));
    let p = single(
        &text,
        "resource \"web\".servers[2]",
        "server \"p1\" is listed twice: servers[0] (the primary) and servers[2]; a server may appear once",
        "servers = [",
    );
    assert_eq!(
        p.column,
        Some(line_col(&text, text.rfind("\"p1\"").unwrap()).1)
    );
}

#[test]
fn address_family_must_match_the_vip() {
    let text = with_gateway(&format!(
        "{TWO_SERVERS}[[server]]\nname = \"v6\"\naddress = \"2001:2::10\"\n{}",
        resource(
            "web",
            "198.18.100.1",
            "tcp",
            "ports = [80]\n",
            "[\"p1\", \"v6\"]"
        )
    ));
    single(
        &text,
        "resource \"web\".servers[1]",
        "server \"v6\" has an IPv6 address (2001:2::10) but the VIP 198.18.100.1 is IPv4",
        "servers = [",
    );
}

#[test]
fn timeout_longer_than_interval_is_refused() {
    let text = with_gateway(
        "[[server]]\nname = \"a\"\naddress = \"198.18.2.1\"\nchecks = [\n  { type = \"tcp\", port = 80, interval = \"100ms\", timeout = \"200ms\" },\n]\n",
    );
    single(
        &text,
        "server \"a\".checks[0].timeout",
        "timeout 200ms is longer than the interval 100ms: a check must finish before the next one starts",
        "{ type",
    );
    // An interval shorter than the default timeout is caught too, on `interval`.
    single(
        &with_gateway("[[server]]\nname = \"a\"\naddress = \"198.18.2.1\"\nchecks = [{ type = \"icmp\", interval = \"20ms\" }]\n"),
        "server \"a\".checks[0].interval",
        "timeout 50ms is longer than the interval 20ms",
        "checks",
    );
    // In [check_defaults]: reported once, not again for each check that inherits it.
    let text = with_gateway(
        "[check_defaults]\ninterval = \"1s\"\ntimeout = \"2s\"\n[[server]]\nname = \"a\"\naddress = \"198.18.2.1\"\n[[server]]\nname = \"b\"\naddress = \"198.18.2.2\"\nchecks = [{ type = \"icmp\" }]\n",
    );
    single(
        &text,
        "check_defaults.timeout",
        "timeout 2s is longer than the interval 1s",
        "timeout",
    );
}

#[test]
fn check_values_are_validated() {
    let text = with_gateway(
        r#"[[server]]
name = "a"
address = "198.18.2.1"
checks = [
  { type = "tcp", port = 0 },
  { type = "icmp", interval = "2ms", timeout = "1ms" },
  { type = "icmp", rise = 0, fall = -1 },
  { type = "http", port = 80, path = "health" },
  { type = "http", port = 80, expect_status = 600 },
  { type = "udp", port = 53, send = "" },
  { type = "ftp", port = 21 },
  { port = 21 },
  { type = "icmp", port = 7 },
]
"#,
    );
    let e = err(&text);
    let got = e
        .problems
        .iter()
        .map(|p| (p.line.unwrap() - 7, p.field.as_str(), p.message.as_str()))
        .collect::<Vec<_>>();
    let f = |i: usize, name: &str| format!("server \"a\".checks[{i}].{name}");
    let want = [
        (
            0,
            f(0, "port"),
            "invalid port 0: a port is between 1 and 65535".to_owned(),
        ),
        (
            1,
            f(1, "interval"),
            "interval 2ms is too short: at least 5ms".into(),
        ),
        (2, f(2, "rise"), "must be at least 1, got 0".into()),
        (2, f(2, "fall"), "must be at least 1, got -1".into()),
        (3, f(3, "path"), "\"health\" must start with '/'".into()),
        (
            4,
            f(4, "expect_status"),
            "must be between 100 and 599, got 600".into(),
        ),
        (
            5,
            f(5, "send"),
            "must not be empty (omit it for the default)".into(),
        ),
        (
            6,
            f(6, "type"),
            "unknown value \"ftp\", expected one of \"tcp\", \"http\", \"udp\", \"icmp\"".into(),
        ),
        (
            7,
            f(7, "type"),
            "missing field `type` in server \"a\".checks[7]".into(),
        ),
        (
            8,
            f(8, "port"),
            "`port` is not a field of an icmp check (only of tcp, http and udp checks)".into(),
        ),
    ];
    assert_eq!(got.len(), want.len(), "{e}");
    for (g, w) in got.iter().zip(want.iter()) {
        assert_eq!((g.0, g.1, g.2), (w.0, w.1.as_str(), w.2.as_str()), "{e}");
    }
}

#[test]
fn bad_duration_names_the_field() {
    let text = with_gateway(&format!(
        "{TWO_SERVERS}{}drain = \"30 parsecs\"\n",
        resource("web", "198.18.100.1", "tcp", "ports = [80]\n", "[\"p1\"]")
    ));
    single(
        &text,
        "resource \"web\".drain",
        "invalid duration \"30 parsecs\": unknown time unit \"parsecs\"",
        "drain",
    );
    single(
        &with_gateway("[dataplane]\nudp_idle = 60\n"),
        "dataplane.udp_idle",
        "expected a duration string such as \"50ms\", \"2s\" or \"1m\", found an integer (60)",
        "udp_idle",
    );
    single(
        &with_gateway("[dataplane]\ntcp_idle = \"0s\"\n"),
        "dataplane.tcp_idle",
        "must be longer than 0",
        "tcp_idle",
    );
}

#[test]
fn etcd_backend_settings_and_errors() {
    let c = ok(&with_gateway(
        "[directory]\nbackend = \"etcd\"\nendpoints = [\"http://198.18.200.1:2379\", \"http://etcd-2:2379\"]\nprefix = \"/ftn/lab/\"\nlease_ttl = \"5s\"\nrequest_timeout = \"300ms\"\nuser = \"ftn\"\npassword = \"pw\"\n",
    ));
    let DirectoryConfig::Etcd(e) = &c.directory else {
        panic!("expected the etcd backend, got {:?}", c.directory)
    };
    assert_eq!(
        e.endpoints,
        ["http://198.18.200.1:2379", "http://etcd-2:2379"]
    );
    assert_eq!(e.prefix, "/ftn/lab");
    assert_eq!(e.lease_ttl, Duration::from_secs(5));
    assert_eq!(e.request_timeout, Duration::from_millis(300));
    assert_eq!(e.dial_timeout, Duration::from_secs(2));
    assert_eq!(
        (e.user.as_deref(), e.password.as_deref()),
        (Some("ftn"), Some("pw"))
    );
    // The password is never shown.
    let shown = serde_json::to_string(&c).unwrap();
    assert!(!shown.contains("\"pw\""), "{shown}");
    assert!(shown.contains("\"password_set\":true"), "{shown}");

    single(
        &with_gateway("[directory]\nbackend = \"etcd\"\n"),
        "directory.endpoints",
        "missing field `endpoints` in directory",
        "[directory]",
    );
    single(
        &with_gateway("[directory]\nbackend = \"etcd\"\nendpoints = [\"198.18.200.1:2379\"]\n"),
        "directory.endpoints[0]",
        "invalid etcd endpoint \"198.18.200.1:2379\": expected http://HOST:PORT or https://HOST:PORT",
        "\"198.18",
    );
    single(
        &with_gateway("[directory]\nbackend = \"etcd\"\nendpoints = [\"http://e:0\"]\n"),
        "directory.endpoints[0]",
        "port \"0\" is not 1-65535",
        "\"http",
    );
    single(
        &with_gateway("[directory]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nlease_ttl = \"1s\"\n"),
        "directory.lease_ttl",
        "must be whole seconds between 2s and 60s",
        "\"1s\"",
    );
    single(
        &with_gateway("[directory]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\npath = \"/var/lib/ftn\"\n"),
        "directory.path",
        "unknown field `path`",
        "path",
    );
    single(
        &with_gateway(
            "[directory]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nuser = \"ftn\"\n",
        ),
        "directory.user",
        "`user` needs `password` or `password_file`",
        "\"ftn\"",
    );
    single(
        &with_gateway("[directory]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\", \"https://f:2379\"]\n"),
        "directory.endpoints",
        "mixes http:// and https:// endpoints",
        "[\"http",
    );
    single(
        &with_gateway(
            "[directory]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nprefix = \"ftn\"\n",
        ),
        "directory.prefix",
        "invalid key prefix \"ftn\"",
        "\"ftn\"",
    );
    single(
        &with_gateway("[directory]\nbackend = \"zookeeper\"\n"),
        "directory.backend",
        "unknown value \"zookeeper\", expected one of \"embedded\", \"etcd\"",
        "backend",
    );
}

#[test]
fn api_token_inline_or_from_file() {
    single(
        &with_gateway("[api]\ntoken = \"abc\"\ntoken_file = \"/etc/ftn/token\"\n"),
        "api.token_file",
        "`token` and `token_file` are both set: set only one of them",
        "token_file",
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ftn.toml");
    std::fs::write(dir.path().join("token"), "  t0ken-123\n").unwrap();
    // Relative to the file's directory.
    let c = parse(&with_gateway("[api]\ntoken_file = \"token\"\n"), &cfg).unwrap();
    assert_eq!(c.api.token.as_deref(), Some("t0ken-123"));
    assert!(
        !format!("{c:?}").contains("t0ken-123"),
        "Debug must not show the token"
    );

    std::fs::write(dir.path().join("empty"), "\n \n").unwrap();
    let e = parse(&with_gateway("[api]\ntoken_file = \"empty\"\n"), &cfg).unwrap_err();
    assert_eq!(e.problems.len(), 1);
    assert_eq!(
        e.problems[0].message,
        format!(
            "token file {}: the token is empty",
            dir.path().join("empty").display()
        )
    );
    assert_eq!(e.problems[0].line, Some(4));
    let e = parse(&with_gateway("[api]\ntoken_file = \"missing\"\n"), &cfg).unwrap_err();
    assert!(
        e.problems[0].message.starts_with(&format!(
            "cannot read the token file {}: ",
            dir.path().join("missing").display()
        )),
        "{e}"
    );
    single(
        &with_gateway("[api]\ntoken = \"a b\"\n"),
        "api.token",
        "the token must not contain whitespace or control characters",
        "token",
    );
    single(
        &with_gateway("[api]\nlisten = \"localhost\"\n"),
        "api.listen",
        "invalid listen address \"localhost\": expected IP:PORT",
        "listen",
    );
}

#[test]
fn syntax_error_has_a_line() {
    let text = "[gateway]\ninterfaces = [\"eth0\"\n\n[api]\n";
    let e = err(text);
    assert_eq!(e.problems.len(), 1);
    assert_eq!(e.problems[0].field, "");
    assert!(e.problems[0].line.is_some(), "{e}");
    assert!(!e.problems[0].message.contains('\n'));
    let e = err("[gateway]\ninterfaces = [\"eth0\"]\nxdp_mode = \"auto\"\nxdp_mode = \"native\"\n");
    assert_eq!(e.problems[0].line, Some(4), "{e}");
    assert!(
        e.problems[0].message.contains("duplicate key `xdp_mode`"),
        "{e}"
    );
    assert!(e.to_string().starts_with("ftn.toml:4:"), "{e}");
}

#[test]
fn several_problems_are_all_reported_in_file_order() {
    let text = r#"[gateway]
interfaces = ["eth0", "eth0", "a/b", "a-very-long-interface-name"]
xdp_mode = "fast"

[[server]]
name = "-bad"
address = "198.18.2.1"

[[server]]
name = "p1"
address = "2001:2::1"

[[resource]]
name = "web"
vip = "198.18.100.1"
protocol = "tcp"
ports = [80, 80]
servers = []
hold = "10s"
colour = "blue"

[[resource]]
name = "ping"
vip = "198.18.100.1"
protocol = "icmp"
ports = [1]
servers = ["p1", "nope"]
failback = "manual"
hold = "5s"
"#;
    let e = err(text);
    let got = e
        .problems
        .iter()
        .map(|p| (p.line.unwrap(), p.field.as_str()))
        .collect::<Vec<_>>();
    assert_eq!(
        got,
        [
            (2, "gateway.interfaces[1]"),
            (2, "gateway.interfaces[2]"),
            (2, "gateway.interfaces[3]"),
            (3, "gateway.xdp_mode"),
            (6, "server \"-bad\".name"),
            (17, "resource \"web\".ports[1]"),
            (18, "resource \"web\".servers"),
            (20, "resource \"web\".colour"),
            (26, "resource \"ping\".ports"),
            (27, "resource \"ping\".servers[0]"),
            (27, "resource \"ping\".servers[1]"),
            (29, "resource \"ping\".hold"),
        ],
        "{e}"
    );
    let lines = e.to_string().lines().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(lines.len(), 12);
    assert_eq!(
        lines[0],
        "ftn.toml:2:23: gateway.interfaces[1]: interface \"eth0\" is listed twice"
    );
    assert_eq!(
        lines[4],
        "ftn.toml:6:8: server \"-bad\".name: invalid name \"-bad\": a name starts with a letter or a digit"
    );
    assert_eq!(
        lines[11],
        "ftn.toml:29:8: resource \"ping\".hold: `hold` is only allowed with failback = \"hold\" (failback is \"manual\")"
    );
    assert!(lines[9].contains("has an IPv6 address (2001:2::1) but the VIP 198.18.100.1 is IPv4"));
    assert!(
        lines[10].contains("unknown server \"nope\" (known: p1)"),
        "{}",
        lines[10]
    );
}

#[test]
fn resource_rules() {
    let base = |extra: &str| {
        with_gateway(&format!(
            "{TWO_SERVERS}[[resource]]\nname = \"r\"\nvip = \"198.18.100.1\"\n{extra}"
        ))
    };
    single(
        &base("protocol = \"tcp\"\nservers = [\"p1\"]\n"),
        "resource \"r\".ports",
        "missing field `ports`: a tcp resource needs at least one port",
        "[[resource]]",
    );
    single(
        &base("protocol = \"udp\"\nports = []\nservers = [\"p1\"]\n"),
        "resource \"r\".ports",
        "must list at least one port",
        "ports",
    );
    single(
        &base("protocol = \"icmp\"\nports = [7]\nservers = [\"p1\"]\n"),
        "resource \"r\".ports",
        "an icmp resource has no ports",
        "ports",
    );
    single(
        &base("protocol = \"tcp\"\nports = [65536]\nservers = [\"p1\"]\n"),
        "resource \"r\".ports[0]",
        "invalid port 65536",
        "ports",
    );
    single(
        &base("protocol = \"tcp\"\nports = [80]\nservers = []\n"),
        "resource \"r\".servers",
        "must list at least one server (the primary first, then the backups)",
        "servers",
    );
    single(
        &base("protocol = \"sctp\"\nports = [80]\nservers = [\"p1\"]\n"),
        "resource \"r\".protocol",
        "unknown value \"sctp\", expected one of \"tcp\", \"udp\", \"icmp\"",
        "protocol",
    );
    single(
        &base("protocol = \"tcp\"\nports = [80]\nservers = [\"p1\"]\nfailback = \"immediate\"\nhold = \"5s\"\n"),
        "resource \"r\".hold",
        "`hold` is only allowed with failback = \"hold\" (failback is \"immediate\")",
        "hold =",
    );
    // `hold` without `failback`: failback defaults to hold, so it is accepted.
    let c = ok(&base(
        "protocol = \"tcp\"\nports = [80]\nservers = [\"p1\"]\nhold = \"3s\"\n",
    ));
    assert_eq!(
        c.resources[0].failback,
        Failback::Hold(Duration::from_secs(3))
    );
    // Same name rules as servers, and names are unique.
    single(
        &with_gateway(&format!(
            "{TWO_SERVERS}{}",
            resource("a b", "198.18.100.1", "icmp", "", "[\"p1\"]")
        )),
        "resource \"a b\".name",
        "invalid name \"a b\": ' ' is not allowed",
        "name = \"a b\"",
    );
    let text = with_gateway(&format!(
        "{TWO_SERVERS}{}{}",
        resource("r", "198.18.100.1", "icmp", "", "[\"p1\"]"),
        resource("r", "198.18.100.2", "icmp", "", "[\"b1\"]")
    ));
    let e = err(&text);
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(
        e.problems[0].message,
        format!(
            "duplicate resource name \"r\": already defined (line {})",
            line_of(&text, "name = \"r\"")
        )
    );
    // Name too long.
    let long = "x".repeat(64);
    single(
        &with_gateway(&format!(
            "[[server]]\nname = \"{long}\"\naddress = \"198.18.2.1\"\n"
        )),
        &format!("server \"{long}\".name"),
        "is too long (64 characters, at most 63)",
        "name",
    );
}

#[test]
fn gateway_rules() {
    single(
        "[gateway]\ninterfaces = []\n",
        "gateway.interfaces",
        "must list at least one interface",
        "interfaces",
    );
    single(
        "[gateway]\ninterfaces = [\"eth0:1\"]\n",
        "gateway.interfaces[0]",
        "invalid interface name \"eth0:1\": '/', ':', whitespace and control characters are not allowed",
        "interfaces",
    );
    single(
        "[gateway]\ninterfaces = [\"eth0\"]\npin_dir = \"bpf/ftn\"\n",
        "gateway.pin_dir",
        "\"bpf/ftn\" is not an absolute path",
        "pin_dir",
    );
    let e = err("[api]\nlisten = \"127.0.0.1:7480\"\n");
    assert_eq!(
        e.to_string(),
        "ftn.toml: gateway: missing table [gateway] (it needs at least `interfaces`)"
    );
    single(
        "[gateway]\nxdp_mode = \"native\"\n",
        "gateway.interfaces",
        "missing field `interfaces` in gateway",
        "[gateway]",
    );
}

#[test]
fn limits_are_enforced() {
    let n = MAX_SERVERS as usize + 1;
    let mut text = with_gateway("");
    for i in 0..n {
        text.push_str(&format!(
            "[[server]]\nname = \"s{i}\"\naddress = \"198.18.{}.{}\"\nchecks = [{{ type = \"icmp\" }}]\n",
            i / 250,
            i % 250 + 1
        ));
    }
    let e = err(&text);
    assert_eq!(e.problems.len(), 1, "{}", e.problems[0].message);
    assert_eq!(e.problems[0].field, format!("server \"s{}\"", n - 1));
    assert_eq!(
        e.problems[0].message,
        format!("too many servers: {n} (the dataplane holds at most {MAX_SERVERS})")
    );
}

#[test]
fn display_and_load_name_the_file() {
    let e = ConfigError {
        path: "/etc/ftn/ftn.toml".into(),
        problems: vec![
            Problem {
                line: Some(23),
                column: Some(11),
                field: "resource \"web\".servers[2]".into(),
                message: "unknown server \"p9\" (known: p1, b1)".into(),
            },
            Problem {
                line: None,
                column: None,
                field: "gateway".into(),
                message: "missing".into(),
            },
        ],
    };
    assert_eq!(
        e.to_string(),
        "/etc/ftn/ftn.toml:23:11: resource \"web\".servers[2]: unknown server \"p9\" (known: p1, b1)\n/etc/ftn/ftn.toml: gateway: missing"
    );
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let e = load(&missing).unwrap_err();
    assert_eq!(e.path, missing);
    assert!(
        e.to_string().starts_with(&format!(
            "{}: cannot read the configuration file: ",
            missing.display()
        )),
        "{e}"
    );
    let file = dir.path().join("ftn.toml");
    std::fs::write(&file, FULL).unwrap();
    let c = load(&file).unwrap();
    assert_eq!(c.source, file);
    assert_eq!(c.resources.len(), 4);
}

#[test]
fn running_config_serializes_without_the_token() {
    let c = ok(FULL);
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["api"]["token_set"], true);
    assert!(!v.to_string().contains("s3cret"));
    assert_eq!(v["api"]["listen"], "[::1]:9000");
    assert_eq!(v["gateway"]["xdp_mode"], "native");
    assert_eq!(v["directory"]["backend"], "embedded");
    assert_eq!(v["dataplane"]["tcp_idle"], "10m");
    assert_eq!(v["dataplane"]["tcp_closing_idle"], "10s");
    let p1 = &v["servers"][0];
    assert_eq!(p1["checks"][0]["type"], "tcp");
    assert_eq!(p1["checks"][0]["interval"], "100ms");
    assert_eq!(p1["checks"][1]["path"], "/health");
    assert_eq!(v["servers"][2]["checks"][0]["send"], "hello");
    let web = &v["resources"][0];
    assert_eq!(web["failback"]["policy"], "immediate");
    assert_eq!(web["drain"], "5s");
    assert_eq!(web["on_no_server"], "reject");
    assert_eq!(v["resources"][2]["failback"]["hold"], "1m");
}

#[test]
fn dist_etcd_example_parses() {
    let text = include_str!("../../../dist/ftn-etcd.toml");
    let dir = tempfile::tempdir().unwrap();
    let mut text = text.to_string();
    for f in [
        "token",
        "etcd-ca.pem",
        "etcd-client.pem",
        "etcd-client-key.pem",
    ] {
        let p = dir.path().join(f);
        std::fs::write(&p, "x\n").unwrap();
        let from = format!("/etc/ftn/{f}\"");
        assert!(text.contains(&from), "{from}");
        text = text.replace(&from, &format!("{}\"", p.display()));
    }
    let c = ok(&text);
    let DirectoryConfig::Etcd(e) = &c.directory else {
        panic!("the etcd example must use the etcd backend")
    };
    assert_eq!(e.endpoints.len(), 3);
    assert_eq!(c.gateway.name, "gw1");
    let a = c
        .announce
        .as_ref()
        .expect("the etcd example announces its VIPs");
    assert_eq!((a.table, a.return_routes.len()), (100, 1));
    assert!(e.ca_file.is_some() && e.cert_file.is_some() && e.key_file.is_some());
}

#[test]
fn dist_example_parses() {
    let text = include_str!("../../../dist/ftn.toml");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "example-token\n").unwrap();
    assert!(text.contains("token_file = \"/etc/ftn/token\""));
    let text = text.replace("/etc/ftn/token", token.to_str().unwrap());
    let c = ok(&text);
    assert_eq!(c.api.token.as_deref(), Some("example-token"));
    assert!(!c.servers.is_empty() && !c.resources.is_empty());
    // Example addresses are documentation/benchmark ranges only.
    for ip in c
        .servers
        .iter()
        .map(|s| s.address)
        .chain(c.resources.iter().map(|r| r.vip))
    {
        let ok = match ip {
            IpAddr::V4(a) => a.octets()[0] == 198 && (a.octets()[1] & 0xfe) == 18,
            IpAddr::V6(a) => a.segments()[..3] == [0x2001, 2, 0],
        };
        assert!(ok, "{ip} is outside 198.18.0.0/15 and 2001:2::/48");
    }
}

#[test]
fn pending_table_size_is_bounded_and_defaults() {
    let c = ok(&with_gateway(""));
    assert_eq!(
        c.gateway.pending_table,
        ftn_common::DEFAULT_PENDING_CAPACITY
    );
    let e = err("[gateway]\ninterfaces = [\"eth0\"]\npending_table = 100\n").to_string();
    assert!(
        e.contains(&format!("{PATH}:3:17: gateway.pending_table:"))
            && e.contains("must be between 1024 and 16777216, got 100"),
        "{e}"
    );
}

#[test]
fn flow_table_size_is_bounded_and_defaults() {
    let c = ok(&with_gateway(""));
    assert_eq!(c.gateway.flow_table, ftn_common::DEFAULT_FLOW_CAPACITY);
    for bad in ["512", "20000000", "\"big\""] {
        let text = format!("[gateway]\ninterfaces = [\"eth0\"]\nflow_table = {bad}\n");
        let e = err(&text).to_string();
        assert!(
            e.contains(&format!("{PATH}:3:14: gateway.flow_table:")),
            "{bad}: {e}"
        );
    }
    let e = err("[gateway]\ninterfaces = [\"eth0\"]\nflow_table = 512\n").to_string();
    assert!(
        e.contains("must be between 1024 and 16777216, got 512"),
        "{e}"
    );
}

#[test]
fn one_server_port_serving_two_vips_is_an_ambiguous_return_path() {
    let text = with_gateway(&format!(
        "{TWO_SERVERS}{}{}",
        resource(
            "a",
            "198.18.100.1",
            "tcp",
            "ports = [80]\n",
            "[\"p1\", \"b1\"]"
        ),
        resource(
            "b",
            "198.18.100.2",
            "tcp",
            "ports = [443, 80]\n",
            "[\"b1\"]"
        ),
    ));
    let e = single(
        &text,
        "resource \"b\".servers[0]",
        "ambiguous return path: server \"b1\" (198.18.3.10) tcp port 80 already serves VIP 198.18.100.1 of resource \"a\"",
        "servers = [\"b1\"]",
    );
    assert!(
        e.message.contains("give the server a second address"),
        "{}",
        e.message
    );
}

#[test]
fn an_icmp_resource_server_of_one_vip_cannot_serve_another_vip() {
    let text = with_gateway(&format!(
        "{TWO_SERVERS}{}{}",
        resource("a", "198.18.100.1", "icmp", "", "[\"p1\"]"),
        resource("b", "198.18.100.2", "icmp", "", "[\"b1\", \"p1\"]"),
    ));
    single(
        &text,
        "resource \"b\".servers[1]",
        "ambiguous return path: server \"p1\" (198.18.2.10) icmp already serves VIP 198.18.100.1",
        "servers = [\"b1\", \"p1\"]",
    );
}

#[test]
fn one_server_on_several_ports_of_one_vip_or_other_protocols_is_fine() {
    let text = with_gateway(&format!(
        "{TWO_SERVERS}{}{}{}{}",
        resource(
            "a",
            "198.18.100.1",
            "tcp",
            "ports = [80]\n",
            "[\"p1\", \"b1\"]"
        ),
        resource("b", "198.18.100.1", "tcp", "ports = [443]\n", "[\"p1\"]"),
        resource("c", "198.18.100.2", "udp", "ports = [80]\n", "[\"p1\"]"),
        resource("d", "198.18.100.2", "tcp", "ports = [81]\n", "[\"b1\"]"),
    ));
    assert_eq!(ok(&text).resources.len(), 4);
}

#[test]
fn only_a_resource_alone_on_its_vip_and_protocol_takes_the_vips_fragments() {
    let text = with_gateway(&format!(
        "{TWO_SERVERS}{}{}{}",
        resource("a", "198.18.100.1", "tcp", "ports = [80]\n", "[\"p1\"]"),
        resource("b", "198.18.100.1", "tcp", "ports = [443]\n", "[\"b1\"]"),
        resource(
            "c",
            "198.18.100.1",
            "udp",
            "ports = [53, 5353]\n",
            "[\"p1\"]"
        ),
    ));
    let c = ok(&text);
    let frag = |n: &str| c.resource(n).unwrap().fragment_matcher();
    // Two tcp resources on one VIP: a fragment without ports could belong to either.
    assert_eq!(frag("a"), None);
    assert_eq!(frag("b"), None);
    assert_eq!(
        frag("c"),
        Some(ResourceMatch {
            vip: "198.18.100.1".parse().unwrap(),
            protocol: Protocol::Udp,
            port: 0
        })
    );
    assert_eq!(
        c.resource("c").unwrap().keys().len(),
        3,
        "two ports and the fragment entry"
    );
}

#[test]
fn fragment_entries_count_against_the_resource_key_limit() {
    let all_ports = format!(
        "ports = [{}]\n",
        (1..=65535)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // 4 × 65,535 port entries + 4 fragment entries = 262,144: exactly the limit.
    let four = [
        resource("a", "198.18.100.1", "tcp", &all_ports, "[\"p1\"]"),
        resource("b", "198.18.100.1", "udp", &all_ports, "[\"p1\"]"),
        resource("c", "198.18.100.2", "tcp", &all_ports, "[\"b1\"]"),
        resource("d", "198.18.100.2", "udp", &all_ports, "[\"b1\"]"),
    ]
    .concat();
    let text = with_gateway(&format!("{TWO_SERVERS}{four}"));
    let keys: usize = ok(&text).resources.iter().map(|r| r.keys().len()).sum();
    assert_eq!(keys, ftn_common::MAX_RESOURCE_KEYS as usize);
    // One more (an icmp resource's entry) is refused, and the message says why.
    let text = with_gateway(&format!(
        "{TWO_SERVERS}{four}{}",
        resource("e", "198.18.100.3", "icmp", "", "[\"p1\"]")
    ));
    let e = err(&text);
    assert_eq!(e.problems.len(), 1, "{e}");
    assert!(
        e.problems[0]
            .message
            .contains("too many (VIP, protocol, port) entries: 262145, of which 4 for fragments"),
        "{e}"
    );
}

#[test]
fn line_index_agrees_with_the_scan_at_every_offset() {
    let text = "a = 1\n\n# é ü\nname = \"x\"\r\nlast";
    // The reference: count the newlines before the offset, and the characters since the last.
    let scan = |offset: usize| {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (
            before.matches('\n').count() + 1,
            before[line_start..].chars().count() + 1,
        )
    };
    let lines = Lines::new(text);
    for off in 0..=text.len() + 2 {
        assert_eq!(lines.line_col(off), scan(off), "offset {off}");
    }
}

#[test]
fn thousands_of_problems_are_reported_without_rescanning_the_file() {
    // 20,000 resources on one (server, port): 19,999 ambiguous return paths, each reported
    // with its line. The scan per problem took minutes at 100,000.
    let mut text = String::from(
        "[gateway]\ninterfaces = [\"eth0\"]\n\n[[server]]\nname = \"a\"\naddress = \"198.18.0.10\"\n\n",
    );
    for i in 0..20_000u32 {
        text.push_str(&format!(
            "[[resource]]\nname = \"r{i}\"\nvip = \"198.19.{}.{}\"\nprotocol = \"tcp\"\nports = [80]\nservers = [\"a\"]\n\n",
            i / 250,
            i % 250 + 1
        ));
    }
    let t = std::time::Instant::now();
    let e = err(&text);
    let took = t.elapsed();
    assert_eq!(e.problems.len(), 19_999, "{:?}", e.problems[0]);
    let last = e.problems.last().unwrap();
    assert_eq!(
        last.line,
        Some(line_of(&text, "\"r19999\"") + 4),
        "{last:?}"
    );
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
}

#[test]
fn announce_is_read_with_its_defaults_and_every_mistake_is_named() {
    let c = ok(&with_gateway(
        "[announce]\nmechanism = \"kernel-table\"\ntable = 100\n",
    ));
    assert_eq!(
        c.announce,
        Some(AnnounceConfig {
            table: 100,
            etcd_grace: Some(DEFAULT_ETCD_GRACE),
            withdraw_wait: DEFAULT_WITHDRAW_WAIT,
            return_routes: vec![],
        })
    );
    assert_eq!(ok(GATEWAY).announce, None);
    let c = ok(&with_gateway(
        "[announce]\nmechanism = \"kernel-table\"\ntable = 4000000000\netcd_grace = \"never\"\nwithdraw_wait = \"0s\"\n",
    ));
    let a = c.announce.unwrap();
    assert_eq!(
        (a.table, a.etcd_grace, a.withdraw_wait),
        (4_000_000_000, None, Duration::ZERO)
    );
    let text = with_gateway("[announce]\ntable = 100\n");
    single(
        &text,
        "announce.mechanism",
        "missing field `mechanism`",
        "[announce]",
    );
    let text = with_gateway("[announce]\nmechanism = \"bgp\"\ntable = 100\n");
    single(
        &text,
        "announce.mechanism",
        "unknown value \"bgp\", expected one of \"kernel-table\"",
        "mechanism",
    );
    let text = with_gateway("[announce]\nmechanism = \"kernel-table\"\ntable = 254\n");
    single(
        &text,
        "announce.table",
        "table 254 is one of the kernel's own",
        "table = 254",
    );
    let text = with_gateway("[announce]\nmechanism = \"kernel-table\"\ntable = 0\n");
    single(
        &text,
        "announce.table",
        "must be at least 1, got 0",
        "table = 0",
    );
    let text = with_gateway(
        "[announce]\nmechanism = \"kernel-table\"\ntable = 100\netcd_grace = \"2h\"\n",
    );
    single(
        &text,
        "announce.etcd_grace",
        "must be at most 1h",
        "etcd_grace",
    );
    let text =
        with_gateway("[announce]\nmechanism = \"kernel-table\"\ntable = 100\ngrace = \"2s\"\n");
    single(&text, "announce.grace", "unknown field", "grace");
    let text = with_gateway(
        "[announce]\nmechanism = \"kernel-table\"\ntable = 100\nreturn_routes = [\"198.18.20.0/24\", \"2001:2::/48\", \"0.0.0.0/0\"]\n",
    );
    let r: Vec<String> = ok(&text)
        .announce
        .unwrap()
        .return_routes
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(r, ["198.18.20.0/24", "2001:2::/48", "0.0.0.0/0"]);
    for (bad, why) in [
        ("198.18.20.1/24", "has bits set past its length /24"),
        ("198.18.20.0", "is not a prefix: write address/length"),
        ("198.18.20.0/33", "is not a prefix length"),
        ("198.18.100.1/32", "is a host route"),
    ] {
        let text = with_gateway(&format!(
            "[announce]\nmechanism = \"kernel-table\"\ntable = 100\nreturn_routes = [\"{bad}\"]\n"
        ));
        single(&text, "announce.return_routes[0]", why, "return_routes");
    }
    let text = with_gateway(&format!(
        "{}withdraw_without_server = \"no\"\n",
        resource("web", "198.18.100.1", "tcp", "ports = [80]\n", "[]")
    ));
    let e = err(&text);
    assert!(
        e.problems
            .iter()
            .any(|p| p.field == "resource \"web\".withdraw_without_server"
                && p.message.contains("expected a boolean (true or false)")),
        "{e}"
    );
}
