//! The servers and resources every gateway of a shared directory must declare alike, and
//! the names of the gateways.

use super::blob;
use super::*;

// ---------------------------------------------------------------------------------------------
// Declarations.

#[derive(Serialize, Deserialize)]
pub(super) struct Declarations {
    pub(super) gateway: String,
    pub(super) at_ms: u64,
    pub(super) servers: serde_json::Value,
    pub(super) resources: serde_json::Value,
}

/// Publishes this gateway's servers and resources if the directory has none yet, or checks
/// that they are exactly the directory's. A gateway that declares anything else refuses to
/// start: two gateways must never forward one VIP by different rules.
pub async fn check_declarations(pool: &Pool, keys: &Keys, config: &Config) -> anyhow::Result<()> {
    let servers = serde_json::to_value(&config.servers)?;
    let resources = serde_json::to_value(&config.resources)?;
    let ours = Declarations {
        gateway: config.gateway.name.clone(),
        at_ms: crate::directory::now_ms(),
        servers,
        resources,
    };
    // Compressed, and in chunks when large (100,000 resources are ~15 MB of JSON).
    let blob = blob::encode(
        &ours,
        &keys.chunks(&format!(
            "declarations-{}-{}",
            ours.at_ms,
            std::process::id()
        )),
    )?;
    blob::put_chunks(pool, keys, None, &blob.chunks).await?;
    let value = blob.value.clone();
    let txn = Txn::new()
        .when([Compare::create_revision(
            keys.declarations(),
            CompareOp::Equal,
            0,
        )])
        .and_then([TxnOp::put(keys.declarations(), value, None)])
        .or_else([TxnOp::get(keys.declarations(), None)]);
    let resp = pool
        .call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
        .map_err(|e| anyhow::anyhow!("etcd: publishing the declarations: {e}"))?;
    if resp.succeeded() {
        tracing::info!(key = %keys.declarations(), "published this gateway's servers and resources as the shared declarations");
        return Ok(());
    }
    blob::drop_chunks(pool, &blob).await;
    let kv = first_kv(&resp)
        .ok_or_else(|| anyhow::anyhow!("etcd: the declarations key vanished while reading it"))?;
    let at = resp.header().map_or(0, |h| h.revision());
    let what = format!("etcd key {} (ftn declarations)", keys.declarations());
    let theirs: Declarations = blob::read(pool, kv.value(), at, &what).await?;
    let mut diffs = Vec::new();
    diff_named(&theirs.servers, &ours.servers, "server", &mut diffs);
    diff_named(&theirs.resources, &ours.resources, "resource", &mut diffs);
    if diffs.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{}: this gateway's servers and resources differ from the shared declarations in etcd (key {}, written by gateway {:?}): {}. Every gateway must declare the same servers and resources; fix this file, or, to change them for all gateways, stop every gateway, delete that key (etcdctl del {}) and start them with the new file",
        config.source.display(),
        keys.declarations(),
        theirs.gateway,
        diffs.join("; "),
        keys.declarations(),
    )
}

pub(super) fn diff_named(
    theirs: &serde_json::Value,
    ours: &serde_json::Value,
    what: &str,
    out: &mut Vec<String>,
) {
    let by_name = |v: &serde_json::Value| -> BTreeMap<String, serde_json::Value> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| (x["name"].as_str().unwrap_or("?").to_owned(), x.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (t, o) = (by_name(theirs), by_name(ours));
    for (name, v) in &o {
        match t.get(name) {
            None => out.push(format!("{what} {name:?} is not in the shared declarations")),
            Some(tv) if tv != v => out.push(format!("{what} {name:?} is declared differently")),
            _ => {}
        }
    }
    for name in t.keys().filter(|n| !o.contains_key(*n)) {
        out.push(format!(
            "{what} {name:?} of the shared declarations is missing here"
        ));
    }
    if out.is_empty() && theirs != ours {
        out.push(format!("the {what}s are declared in another order"));
    }
}

/// This host's identity: `/etc/machine-id`, else the host name.
pub fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(crate::config::default_gateway_name)
}

/// Refuses to start when a live gateway of another host uses this gateway's name (a copied
/// configuration): the two would overwrite each other's record. The same host (a restart) is
/// fine.
pub async fn check_name_free(
    pool: &Pool,
    keys: &Keys,
    name: &str,
    machine: &str,
) -> anyhow::Result<()> {
    let key = keys.gateway(name);
    let resp = pool
        .call(|mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        })
        .await
        .map_err(|e| anyhow::anyhow!("etcd: reading {key}: {e}"))?;
    let Some(kv) = resp.kvs().first() else {
        return Ok(());
    };
    let Ok(other) = serde_json::from_slice::<GatewayRecord>(kv.value()) else {
        return Ok(()); // a record this version cannot read: its writer is another version
    };
    if !other.machine.is_empty() && other.machine != machine {
        let since = if other.started_ms == 0 {
            String::new()
        } else {
            format!(
                ", started {}",
                humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + Duration::from_millis(other.started_ms)
                )
            )
        };
        anyhow::bail!(
            "gateway.name {name:?} is already used by a live gateway on another host (machine id {}, API {}{since}): give each gateway its own [gateway] name",
            other.machine,
            other.api,
        );
    }
    Ok(())
}
