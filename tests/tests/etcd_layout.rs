//! The shared directory's layout on a real etcd (one member in a namespace of its own; etcd's
//! default request limit of 1.5 MiB): a commit writes what it changed, whatever the size of the
//! directory; a 10,000-resource failover is one commit that followers apply from the watch; a
//! commit larger than one request goes in chunks and stays atomic; checkpoints trim the log
//! and the events beyond the retention; a layout-1 directory is migrated, or refused while an
//! earlier version leads it. Needs root (namespaces); never skipped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ftn_controller::directory::etcd::{
    ClusterEvent, EtcdDirectory, Keys, Pool, CHECKPOINT_EVERY, EVENTS_KEPT,
};
use ftn_controller::directory::{
    Directory, EventDraft, ResourceRecord, ServerRecord, Snapshot, Update,
};
use ftn_controller::model::Health;
use ftn_tests::etcd::{block_on_in, event, gateway, leader_event, settings, Etcd, Gw};

fn server(name: &str, id: u32, up: bool) -> ServerRecord {
    ServerRecord {
        name: name.into(),
        id,
        address: format!("198.18.60.{}", id + 1).parse().unwrap(),
        health: if up { Health::Up } else { Health::Down },
        drained_at_ms: None,
        dataplane_up: up,
        generation: 1,
        since_ms: 1,
        evidence: String::new(),
    }
}

/// `n` resources on `current`, with a reason of `reason(i)`.
fn resources(n: u32, current: &str, reason: impl Fn(u32) -> String) -> Vec<Arc<ResourceRecord>> {
    (0..n)
        .map(|i| {
            Arc::new(ResourceRecord {
                name: format!("r{i:05}"),
                id: i,
                servers: vec!["primary".into(), "backup".into()],
                current: Some(current.into()),
                pinned: None,
                generation: 1,
                since_ms: 1_000 + u64::from(i),
                reason: reason(i),
            })
        })
        .collect()
}

fn events(n: usize, kind: &str) -> Vec<EventDraft> {
    (0..n)
        .map(|i| EventDraft {
            kind: kind.into(),
            resource: Some(format!("r{i:05}")),
            server: Some("primary".into()),
            message: format!("{kind} of r{i:05}: primary down (2 consecutive checks failed)"),
        })
        .collect()
}

/// Keys under `prefix` (keys only).
async fn count(pool: &Pool, prefix: String) -> usize {
    let opts = etcd_client::GetOptions::new()
        .with_prefix()
        .with_keys_only();
    pool.call(|mut c| {
        let (p, o) = (prefix.clone(), opts.clone());
        async move { c.get(p, Some(o)).await }
    })
    .await
    .unwrap()
    .kvs()
    .len()
}

/// The follower's next directory event of the given revision (entry or whole state), within
/// `limit`.
async fn next_state(gw: &mut Gw, revision: u64, limit: Duration) -> ClusterEvent {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let ev = tokio::time::timeout_at(deadline, gw.events.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("no directory event of revision {revision} within {limit:?}")
            })
            .expect("session ended");
        match &ev {
            ClusterEvent::Entry(e) if e.revision == revision => return ev,
            ClusterEvent::State(s) if s.revision >= revision => return ev,
            _ => {}
        }
    }
}

#[test]
fn a_10000_resource_failover_is_one_commit_followers_apply_from_the_watch() {
    let etcd = Etcd::start();
    block_on_in(&etcd.ns, || async {
        let mut a = gateway("gw-a").await;
        let (_, fence) = leader_event(&mut a).await;
        assert!(fence.is_some(), "gw-a alone must lead");
        let mut b = gateway("gw-b").await;
        leader_event(&mut b).await;
        let n = 10_000;
        // Revision 1: the directory's first records (10,000 resources on the primary).
        let first = Update {
            set_servers: vec![server("primary", 0, true), server("backup", 1, true)],
            set_resources: resources(n, "primary", |_| "the first server".into()),
            events: vec![EventDraft {
                kind: "start".into(),
                resource: None,
                server: None,
                message: "10,000 resources".into(),
            }],
            ..Default::default()
        };
        assert_eq!(a.dir.commit(0, &first).await.unwrap(), 1);
        next_state(&mut b, 1, Duration::from_secs(10)).await;
        // Revision 2: the primary fails, every resource moves: 10,000 records and 10,000
        // events, ~4 MB of JSON, in one commit.
        let failover = Update {
            set_servers: vec![server("primary", 0, false)],
            set_resources: resources(n, "backup", |_| {
                "primary primary down: 2 consecutive tcp:80 checks failed: connection refused"
                    .into()
            }),
            events: events(n as usize, "failover"),
            ..Default::default()
        };
        let t = Instant::now();
        assert_eq!(a.dir.commit(1, &failover).await.unwrap(), 2);
        eprintln!("10,000-resource failover committed in {:?}", t.elapsed());
        match next_state(&mut b, 2, Duration::from_secs(10)).await {
            ClusterEvent::Entry(e) => {
                assert_eq!(e.update.set_resources.len(), n as usize);
                assert_eq!(e.events, u64::from(n));
            }
            ClusterEvent::State(_) => panic!("the follower read everything instead of the entry"),
            _ => unreachable!(),
        }
        let (sa, sb) = (a.dir.current(), b.dir.current());
        assert_eq!(sa, sb, "the follower's state is the leader's");
        assert_eq!(sb.resources["r09999"].current.as_deref(), Some("backup"));
        assert_eq!(sb.next_event, 2 + u64::from(n));
        // Revision 3: records whose content does not compress (a distinct random reason each)
        // are larger than one etcd request: they go in chunks, the commit is still one.
        let mut x: u64 = 0x2545f4914f6cdd1d;
        let mut noise = move || {
            (0..256)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'a' + (x % 26) as u8)
                })
                .collect::<String>()
        };
        let reasons: Vec<String> = (0..n).map(|_| noise()).collect();
        let back = Update {
            set_servers: vec![server("primary", 0, true)],
            set_resources: resources(n, "primary", |i| reasons[i as usize].clone()),
            ..Default::default()
        };
        let keys = a.dir.keys().clone();
        let pool = a.dir.pool().clone();
        assert_eq!(a.dir.commit(2, &back).await.unwrap(), 3);
        let chunks = count(&pool, keys.chunk_names("log-00000000000000000003")).await;
        assert!(
            chunks >= 2,
            "the 3rd commit should be chunked, it has {chunks} chunks"
        );
        match next_state(&mut b, 3, Duration::from_secs(10)).await {
            ClusterEvent::Entry(e) => assert_eq!(e.update.set_resources[7].reason, reasons[7]),
            _ => panic!("the follower read everything instead of the chunked entry"),
        }
        assert_eq!(a.dir.current(), b.dir.current());
        // A gateway that starts now reads the same directory (no checkpoint yet: the log).
        let fresh = EtcdDirectory::open(pool.clone(), keys.clone())
            .await
            .unwrap();
        assert_eq!(fresh.current(), a.dir.current());
        // The events read back in pages.
        let page = b.dir.events(1, 3).await.unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(page[0].kind, "failover");
        a.cancel.cancel();
        b.cancel.cancel();
    });
}

#[test]
fn checkpoints_trim_the_log_and_the_events_beyond_the_retention() {
    let etcd = Etcd::start();
    block_on_in(&etcd.ns, || async {
        let mut a = gateway("gw-a").await;
        leader_event(&mut a).await;
        let keys = a.dir.keys().clone();
        let pool = a.dir.pool().clone();
        // Three commits of 60,000 events each: 180,000 events, more than the retention.
        let per = 60_000;
        assert!(3 * per as u64 > EVENTS_KEPT && 2 * (per as u64) < EVENTS_KEPT + per as u64);
        for rev in 0..3 {
            let u = Update {
                events: events(per, "test"),
                ..Default::default()
            };
            a.dir.commit(rev, &u).await.unwrap();
        }
        // Then small commits until the first checkpoint is due.
        let mut rev = 3;
        while rev < CHECKPOINT_EVERY {
            rev = a
                .dir
                .commit(rev, &event(&format!("commit {}", rev + 1)))
                .await
                .unwrap();
        }
        // The checkpoint is written in the background: wait for the log below it to go
        // (bounded: 10 s for encoding ~1 MB and three requests).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = count(&pool, keys.log_prefix()).await;
            if left == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{left} log entries still there 10 s after the checkpoint was due"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            count(&pool, keys.checkpoints_prefix()).await,
            1,
            "one checkpoint"
        );
        // Events: the first commit's 60,000 went (the newest 100,000 and the commit that
        // holds the 100,000th newest stay).
        let oldest = a.dir.events(0, 1).await.unwrap();
        assert_eq!(oldest[0].seq, per as u64 + 1, "the first kept event");
        // A commit after the checkpoint, then a gateway that starts reads the checkpoint and
        // the log after it.
        rev = a
            .dir
            .commit(rev, &event("after the checkpoint"))
            .await
            .unwrap();
        let fresh = EtcdDirectory::open(pool.clone(), keys.clone())
            .await
            .unwrap();
        let s: Snapshot = fresh.current();
        assert_eq!(s.revision, rev);
        assert_eq!(s, a.dir.current());
        a.cancel.cancel();
    });
}

#[test]
fn a_layout_1_directory_is_migrated_and_refused_while_an_earlier_version_leads() {
    let etcd = Etcd::start();
    block_on_in(&etcd.ns, || async {
        let cfg = settings();
        let pool = Pool::connect(&cfg).await.unwrap();
        let keys = Keys::new(&cfg.prefix);
        // What an earlier ftn left: the whole state in P/state, events as plain JSON.
        let mut old = Snapshot::default();
        old.advance(&Update {
            set_servers: vec![server("primary", 0, true), server("backup", 1, true)],
            set_resources: resources(3, "primary", |_| "first".into()),
            events: events(2, "start"),
            ..Default::default()
        });
        let old_events = serde_json::json!([
            {"seq":1,"revision":1,"at_ms":5,"kind":"start","message":"one"},
            {"seq":2,"revision":1,"at_ms":5,"kind":"start","message":"two"}
        ]);
        let put = |k: String, v: Vec<u8>| {
            let pool = pool.clone();
            async move {
                pool.call(|mut c| {
                    let (k, v) = (k.clone(), v.clone());
                    async move { c.put(k, v, None).await }
                })
                .await
                .unwrap();
            }
        };
        put(keys.state(), serde_json::to_vec(&old).unwrap()).await;
        put(keys.events(1), serde_json::to_vec(&old_events).unwrap()).await;
        // An earlier version leads it: refused, saying what to do.
        put(keys.leader(), b"old-gw".to_vec()).await;
        let e = match EtcdDirectory::open(pool.clone(), keys.clone()).await {
            Ok(_) => panic!("a layout-1 directory led by an earlier version must be refused"),
            Err(e) => e.to_string(),
        };
        eprintln!("refused: {e}");
        assert!(
            e.contains("layout 1") && e.contains("\"old-gw\"") && e.contains("stop every gateway"),
            "{e}"
        );
        // Nothing was changed by the refusal.
        assert_eq!(count(&pool, keys.head()).await, 0);
        // Once the earlier version is stopped (its leader key gone), it is migrated.
        pool.call(|mut c| {
            let k = keys.leader();
            async move { c.delete(k, None).await }
        })
        .await
        .unwrap();
        let dir = EtcdDirectory::open(pool.clone(), keys.clone())
            .await
            .unwrap();
        assert_eq!(
            dir.current(),
            old,
            "the migrated directory is the old state"
        );
        // The old events still read; P/state now holds what earlier versions refuse.
        let ev = dir.events(0, 10).await.unwrap();
        assert_eq!(
            ev.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["one", "two"]
        );
        let marker = pool
            .call(|mut c| {
                let k = keys.state();
                async move { c.get(k, None).await }
            })
            .await
            .unwrap();
        let value = marker.kvs()[0].value().to_vec();
        assert!(
            serde_json::from_slice::<Snapshot>(&value).is_err(),
            "an earlier version must not read the marker as a state"
        );
        // A second open finds the migrated directory as it is; a leader commits on it.
        drop(dir);
        let mut gw = gateway("gw-new").await;
        let (_, fence) = leader_event(&mut gw).await;
        assert!(fence.is_some());
        assert_eq!(gw.dir.current(), old);
        let rev = gw
            .dir
            .commit(old.revision, &event("first commit in layout 2"))
            .await
            .unwrap();
        assert_eq!(rev, old.revision + 1);
        let ev = gw.dir.events(2, 10).await.unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].seq, 3);
        gw.cancel.cancel();
    });
}
