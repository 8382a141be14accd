//! Reloading the configuration: read off the engine task, apply only the difference, say
//! every change.

use super::*;

/// One check in words, for reload reports: `tcp:80 every 1s, timeout 50ms, rise 3, fall 2`.
pub(super) fn describe_check(c: &config::CheckConfig) -> String {
    format!(
        "{} every {}, timeout {}, rise {}, fall {}",
        c.kind.label(),
        humantime::format_duration(c.interval),
        humantime::format_duration(c.timeout),
        c.rise,
        c.fall
    )
}

/// What a reload changes besides the directory (which the engine's plan reports): checks,
/// servers' addresses, the token, the flow-table timeouts. One line per change, in file order.
pub fn config_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    let old_servers: HashMap<&str, &config::ServerConfig> =
        old.servers.iter().map(|s| (s.name.as_str(), s)).collect();
    let new_names: BTreeSet<&str> = new.servers.iter().map(|s| s.name.as_str()).collect();
    for s in &new.servers {
        match old_servers.get(s.name.as_str()) {
            None => changes.push(format!("server {} added ({})", s.name, s.address)),
            Some(o) => {
                if o.address != s.address {
                    changes.push(format!(
                        "server {}: address {} -> {}",
                        s.name, o.address, s.address
                    ));
                }
                if o.checks != s.checks {
                    let list = |cs: &[config::CheckConfig]| {
                        cs.iter().map(describe_check).collect::<Vec<_>>().join("; ")
                    };
                    changes.push(format!(
                        "server {}: checks {} -> {} (its checks restart from its recorded state)",
                        s.name,
                        list(&o.checks),
                        list(&s.checks)
                    ));
                }
            }
        }
    }
    for s in &old.servers {
        if !new_names.contains(s.name.as_str()) {
            changes.push(format!("server {} removed", s.name));
        }
    }
    if old.api.token != new.api.token {
        changes.push(match (&old.api.token, &new.api.token) {
            (None, Some(_)) => "API token set: changes through the API are enabled".into(),
            (Some(_), None) => "API token removed: changes through the API are refused".into(),
            _ => "API token replaced".into(),
        });
    }
    if old.dataplane != new.dataplane {
        changes.push("[dataplane] flow timeouts changed".into());
    }
    changes
}

/// The longest a reload waits for the configuration file to be read and validated. The read
/// runs on the blocking pool, never on the engine task: a file on a hung filesystem costs the
/// reload, not the failovers meanwhile (what is left blocked is one pool thread).
pub const CONFIG_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads and validates the configuration off the engine task (see [`CONFIG_READ_TIMEOUT`]).
pub(super) async fn read_config(path: &Path) -> Result<config::Config, RequestError> {
    let owned = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || config::load(&owned));
    match tokio::time::timeout(CONFIG_READ_TIMEOUT, read).await {
        Ok(Ok(loaded)) => loaded.map_err(|e| RequestError::Invalid(e.to_string())),
        Ok(Err(e)) => Err(RequestError::Internal(format!(
            "reading {}: the reading task failed: {e}",
            path.display()
        ))),
        Err(_) => Err(RequestError::Invalid(format!(
            "{}: reading and validating the file (or a file it names) took longer than {}s; nothing was applied (a file on a hung filesystem?)",
            path.display(),
            CONFIG_READ_TIMEOUT.as_secs()
        ))),
    }
}

impl Controller {
    /// Loads the config file again; applies it only if it is valid and changes nothing that
    /// needs a restart.
    pub(super) async fn reload(&mut self) -> Result<String, RequestError> {
        let r = self.try_reload().await;
        match &r {
            Ok(m) => {
                self.reloads_ok += 1;
                tracing::info!("configuration reloaded: {m}");
            }
            Err(e) => {
                self.reloads_failed += 1;
                tracing::error!(
                    "configuration reload refused, the running configuration stays: {e}"
                );
            }
        }
        r
    }

    pub(super) async fn try_reload(&mut self) -> Result<String, RequestError> {
        let new = read_config(&self.config_path).await?;
        let old = self.engine.config().clone();
        let mut restart_only = Vec::new();
        if new.gateway != old.gateway {
            restart_only.push("[gateway]");
        }
        if new.directory != old.directory {
            restart_only.push("[directory]");
        }
        if new.announce.as_ref().map(|a| a.table) != old.announce.as_ref().map(|a| a.table) {
            restart_only.push("[announce] (its presence or table)");
        }
        if new.api.listen != old.api.listen {
            restart_only.push("api.listen");
        }
        if (
            new.api.max_connections,
            new.api.max_connections_per_client,
            new.api.header_timeout,
            new.api.request_timeout,
        ) != (
            old.api.max_connections,
            old.api.max_connections_per_client,
            old.api.header_timeout,
            old.api.request_timeout,
        ) {
            restart_only.push("the api limits");
        }
        if self.cluster.is_some() && (new.servers != old.servers || new.resources != old.resources)
        {
            return Err(RequestError::Invalid(format!(
                "{}: the servers and resources of a shared directory are the same on every gateway (etcd key {}); changing them by a reload is not supported: nothing was applied (see the operations guide, \"Changing the declarations of several gateways\")",
                self.config_path.display(),
                self.cluster.as_ref().map(|cv| cv.dir.keys().declarations()).unwrap_or_default()
            )));
        }
        if !restart_only.is_empty() {
            return Err(RequestError::Invalid(format!(
                "{}: {} changed; these take effect only at a restart (ftn keeps forwarding while it restarts), so nothing was applied",
                self.config_path.display(),
                restart_only.join(", ")
            )));
        }
        let new = Arc::new(new);
        let prev = self.engine.config().clone();
        self.engine.set_config(new.clone());
        match self.step(None).await {
            Ok(summary) => {
                if new.dataplane != old.dataplane {
                    self.sync.apply(vec![Change::SetConfig(new.dataplane)]);
                }
                *self.token.write().unwrap_or_else(|p| p.into_inner()) = new.api.token.clone();
                // Verdicts the old checkers already queued count before they are replaced, so
                // that a new checker starts from the newest word on its server.
                let now = self.clock.now_ms();
                let mut queued = false;
                while let Ok(h) = self.health_rx.try_recv() {
                    queued = true;
                    self.observe_local(h, now);
                }
                if queued {
                    let _ = Box::pin(self.step(None)).await;
                }
                self.sync_checkers();
                self.announce();
                let changes = config_changes(&old, &new);
                Ok(match (summary.as_str(), changes.is_empty()) {
                    (_, true) => summary,
                    ("nothing to change", false) => changes.join("; "),
                    (_, false) => format!("{summary}; {}", changes.join("; ")),
                })
            }
            Err(e) => {
                self.engine.set_config(prev);
                Err(e)
            }
        }
    }
}
