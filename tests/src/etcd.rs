//! One etcd member in a network namespace of its own, and the pieces of a gateway on it (its
//! directory and session), for the tests of the shared directory.

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use ftn_controller::{
    config::EtcdConfig,
    directory::etcd::{ClusterEvent, EtcdDirectory, GatewayRecord, Keys, Pool, Session},
    directory::{EventDraft, Update},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{lab::in_ns, require_root, Netns};

/// One etcd member on 127.0.0.1 of its own namespace; killed and its data removed on drop.
pub struct Etcd {
    pub ns: Netns,
    child: Child,
    dir: std::path::PathBuf,
}

impl Etcd {
    pub fn start() -> Etcd {
        require_root();
        let ns = Netns::new("ftne");
        let dir = std::env::temp_dir().join(format!("ftn-etcd-{}", ns.name));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "etcd",
                "--name",
                "solo",
                "--data-dir",
            ])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                "http://127.0.0.1:2379",
                "--advertise-client-urls",
                "http://127.0.0.1:2379",
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "solo=http://127.0.0.1:2380",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log")).unwrap())
            .spawn()
            .expect("start etcd (Debian package etcd-server; `cargo xtask test` installs it)");
        let e = Etcd { ns, child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &e.ns.name,
                    "etcdctl",
                    "--endpoints=http://127.0.0.1:2379",
                    "endpoint",
                    "health",
                ])
                .env("ETCDCTL_API", "3")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy within 10 s; its log:\n{}",
                std::fs::read_to_string(e.dir.join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the future `f` makes on a single-threaded runtime in a thread inside `ns`.
pub fn block_on_in<F, Fut>(ns: &Netns, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    in_ns(ns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
}

pub fn settings() -> EtcdConfig {
    EtcdConfig {
        endpoints: vec!["http://127.0.0.1:2379".into()],
        prefix: "/ftn-test".into(),
        dial_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(1),
        lease_ttl: Duration::from_secs(2),
        ca_file: None,
        cert_file: None,
        key_file: None,
        user: None,
        password: None,
    }
}

pub fn event(msg: &str) -> Update {
    Update {
        events: vec![EventDraft {
            kind: "test".into(),
            resource: None,
            server: None,
            message: msg.into(),
        }],
        ..Default::default()
    }
}

/// A gateway's directory and session; returns the fence once it leads (or None).
pub struct Gw {
    pub dir: Arc<EtcdDirectory>,
    pub session: Session,
    pub events: mpsc::Receiver<ClusterEvent>,
    pub cancel: CancellationToken,
}

pub async fn gateway(name: &str) -> Gw {
    let cfg = settings();
    let pool = Pool::connect(&cfg).await.expect("connect to etcd");
    let dir = Arc::new(
        EtcdDirectory::open(pool, Keys::new(&cfg.prefix))
            .await
            .unwrap(),
    );
    let (tx, events) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let session = Session::start(
        dir.clone(),
        name.into(),
        cfg.lease_ttl,
        GatewayRecord {
            name: name.into(),
            ..Default::default()
        },
        tx,
        cancel.clone(),
    );
    Gw {
        dir,
        session,
        events,
        cancel,
    }
}

/// Waits (at most 5 s) for a leader event; returns (leader name, our fence).
pub async fn leader_event(gw: &mut Gw) -> (Option<String>, Option<i64>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ev = tokio::time::timeout_at(deadline, gw.events.recv())
            .await
            .expect("no leader event within 5 s")
            .expect("session ended");
        if let ClusterEvent::Leader {
            name: Some(n),
            fence,
        } = ev
        {
            return (Some(n), fence);
        }
    }
}
