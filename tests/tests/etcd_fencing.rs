//! The shared directory on a real etcd (one member, in a network namespace of its own, on that
//! namespace's loopback): commits with compare-and-swap, the election, the fence that refuses a
//! deposed leader's late write (the race is forced), the shared declarations (a gateway that
//! declares other servers is refused), and the error when etcd cannot be reached at start.
//! Needs root (namespaces); never skipped. The three-gateway behaviour is in cluster_lab.rs.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ftn_controller::{
    directory::etcd::{self, EtcdDirectory, GatewayRecord, Keys, Pool, Session},
    directory::{Directory, DirectoryError},
};
use ftn_tests::etcd::{block_on_in, event, gateway, leader_event, settings, Etcd};
use ftn_tests::{require_root, Netns};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[test]
fn a_deposed_leaders_late_write_is_refused_by_the_fence() {
    let etcd = Etcd::start();
    block_on_in(&etcd.ns, || async {
        // A starts first and leads.
        let mut a = gateway("gw-a").await;
        let (leader, fence_a) = leader_event(&mut a).await;
        assert_eq!(leader.as_deref(), Some("gw-a"));
        let fence_a = fence_a.expect("gw-a should lead: it was alone");
        let mut b = gateway("gw-b").await;
        let (leader_b, fence_b) = leader_event(&mut b).await;
        assert_eq!(
            (leader_b.as_deref(), fence_b),
            (Some("gw-a"), None),
            "gw-b must follow gw-a"
        );

        // A commits while it leads.
        let r1 = a
            .dir
            .commit(0, &event("decided by gw-a while leading"))
            .await
            .expect("leader commit");
        assert_eq!(r1, 1);
        // A follower cannot commit at all.
        let e = b
            .dir
            .commit(b.dir.current().revision, &event("from a follower"))
            .await
            .unwrap_err();
        assert!(matches!(e, DirectoryError::NotLeader), "{e}");

        // The race: A decides something at revision 1, then stalls (a long pause) past its
        // lease; B becomes the leader and writes; then A's write arrives.
        let stale_decision = event("late write of the deposed gw-a");
        a.cancel.cancel(); // A's session ends: its lease goes, the leader key with it
        let t = Instant::now();
        let fence_b = loop {
            let (name, fence) = leader_event(&mut b).await;
            if name.as_deref() == Some("gw-b") {
                break fence.expect("gw-b leads: it holds the fence");
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "gw-b did not take over"
            );
        };
        assert!(fence_b > fence_a, "fences grow: {fence_a} then {fence_b}");
        eprintln!(
            "gw-b took over in {:?} (fence {fence_a} -> {fence_b})",
            t.elapsed()
        );
        let rev_b = b
            .dir
            .commit(b.dir.current().revision, &event("decided by gw-b"))
            .await
            .expect("new leader commits");
        assert_eq!(rev_b, 2);

        // A's late write, with the fence and the revision it decided from: refused.
        let e = a
            .dir
            .commit_fenced(fence_a, 1, &stale_decision)
            .await
            .unwrap_err();
        assert!(
            matches!(e, DirectoryError::Fenced { fence, .. } if fence == fence_a),
            "{e}"
        );
        // Even after A learns the newest revision, its old fence is refused: the fence, not
        // only the revision, protects the directory.
        let now = a.dir.snapshot().await.unwrap();
        assert_eq!(now.revision, 2);
        let e = a
            .dir
            .commit_fenced(fence_a, 2, &stale_decision)
            .await
            .unwrap_err();
        assert!(matches!(e, DirectoryError::Fenced { .. }), "{e}");
        eprintln!("late write refused: {e}");

        // Nothing of A's late write is in etcd.
        let events = b.dir.events(0, 100).await.unwrap();
        let texts: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(texts, ["decided by gw-a while leading", "decided by gw-b"]);
        // The log is read in pages: after a sequence number, at most `limit`.
        let page = |ev: Vec<ftn_controller::directory::Event>| {
            ev.into_iter().map(|e| e.message).collect::<Vec<_>>()
        };
        assert_eq!(
            page(b.dir.events(0, 1).await.unwrap()),
            ["decided by gw-a while leading"]
        );
        assert_eq!(
            page(b.dir.events(1, 10).await.unwrap()),
            ["decided by gw-b"]
        );
        assert!(b.dir.events(2, 10).await.unwrap().is_empty());
        assert_eq!(b.dir.snapshot().await.unwrap().revision, 2);

        // B's own CAS: a commit decided from an older revision is refused too.
        let e = b
            .dir
            .commit(1, &event("decided from revision 1"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                DirectoryError::Conflict {
                    expected: 1,
                    actual: 2
                }
            ),
            "{e}"
        );
        b.cancel.cancel();
    });
}

fn config(name: &str, backup_address: &str) -> ftn_controller::config::Config {
    let text = format!(
        r#"
[gateway]
name = "{name}"
interfaces = ["eth0"]
[directory]
backend = "etcd"
endpoints = ["http://127.0.0.1:2379"]
prefix = "/ftn-decl"
[[server]]
name = "primary"
address = "198.18.50.1"
[[server]]
name = "backup"
address = "{backup_address}"
[[resource]]
name = "web"
vip = "198.18.100.1"
protocol = "tcp"
ports = [80]
servers = ["primary", "backup"]
"#
    );
    ftn_controller::config::parse(&text, std::path::Path::new("/etc/ftn/ftn.toml"))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn declarations_are_shared_and_a_differing_gateway_is_refused() {
    let etcd = Etcd::start();
    block_on_in(&etcd.ns, || async {
        let mut cfg = settings();
        cfg.prefix = "/ftn-decl".into();
        let pool = Pool::connect(&cfg).await.expect("connect");
        let keys = Keys::new(&cfg.prefix);
        // The first gateway publishes; a second with the same declarations is accepted.
        etcd::check_declarations(&pool, &keys, &config("gw1", "198.18.50.2"))
            .await
            .expect("first gateway");
        etcd::check_declarations(&pool, &keys, &config("gw2", "198.18.50.2"))
            .await
            .expect("same declarations, other gateway name");
        // A third that declares the backup elsewhere is refused, and says what differs.
        let e = etcd::check_declarations(&pool, &keys, &config("gw3", "198.18.50.3"))
            .await
            .unwrap_err()
            .to_string();
        eprintln!("refused: {e}");
        assert!(
            e.contains("/etc/ftn/ftn.toml")
                && e.contains("server \"backup\" is declared differently")
                && e.contains("written by gateway \"gw1\""),
            "{e}"
        );
    });
}

#[test]
fn etcd_unreachable_at_start_is_a_clear_error() {
    require_root();
    // A namespace of our own with nothing listening: connections are refused at once.
    let ns = Netns::new("ftnx");
    block_on_in(&ns, || async {
        let mut cfg = settings();
        cfg.endpoints = vec![
            "http://127.0.0.1:2379".into(),
            "http://127.0.0.1:2381".into(),
        ];
        cfg.dial_timeout = Duration::from_millis(300);
        let t = Instant::now();
        let e = match Pool::connect(&cfg).await {
            Ok(_) => panic!("connecting to nothing must fail"),
            Err(e) => e.to_string(),
        };
        eprintln!("refused after {:?}: {e}", t.elapsed());
        assert!(
            e.starts_with("cannot reach etcd at http://127.0.0.1:2379, http://127.0.0.1:2381:"),
            "{e}"
        );
        assert!(e.contains("directory.endpoints"), "{e}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t.elapsed()
        );
    });
}

#[test]
fn a_gateway_name_used_on_another_host_is_refused() {
    let etcd = Etcd::start();
    block_on_in(&etcd.ns, || async {
        let cfg = settings();
        let pool = Pool::connect(&cfg).await.expect("connect");
        let keys = Keys::new(&cfg.prefix);
        // Nobody uses the name yet.
        etcd::check_name_free(&pool, &keys, "gw1", "host-a")
            .await
            .expect("free name");
        // gw1 runs on host-a (its session publishes its record).
        let dir = Arc::new(
            EtcdDirectory::open(pool.clone(), keys.clone())
                .await
                .unwrap(),
        );
        let (tx, _events) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let session = Session::start(
            dir,
            "gw1".into(),
            cfg.lease_ttl,
            GatewayRecord {
                name: "gw1".into(),
                api: "127.0.0.1:7480".into(),
                machine: "host-a".into(),
                ..Default::default()
            },
            tx,
            cancel.clone(),
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while etcd::check_name_free(&pool, &keys, "gw1", "host-b")
            .await
            .is_ok()
        {
            assert!(Instant::now() < deadline, "gw1's record never appeared");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The same host (a restart) may use the name; another host may not.
        etcd::check_name_free(&pool, &keys, "gw1", "host-a")
            .await
            .expect("same host");
        let e = etcd::check_name_free(&pool, &keys, "gw1", "host-b")
            .await
            .unwrap_err()
            .to_string();
        eprintln!("refused: {e}");
        assert!(
            e.contains(
                "\"gw1\" is already used by a live gateway on another host (machine id host-a"
            ),
            "{e}"
        );
        // Once gw1 stops (its lease revoked), the name is free again.
        cancel.cancel();
        session.finished(Duration::from_secs(2)).await;
        etcd::check_name_free(&pool, &keys, "gw1", "host-b")
            .await
            .expect("free after the stop");
    });
}
