//! The operator kit's monitoring files (`dist/prometheus`, `dist/grafana`): the alert rules are
//! valid (`promtool check rules`) and each alert is reproduced by its unit test (`promtool test
//! rules`); every query of the dashboard is valid PromQL; and every metric the rules and the
//! dashboard use is one that a live `ftn run` exports (a scrape of a gateway of the HA lab, which
//! has the shared directory and the announcements, so that every family is present).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use ftn_tests::ha::Ha;

const PROMTOOL: &str = "/usr/bin/promtool";

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist")
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new(PROMTOOL)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {PROMTOOL} (Debian package prometheus; `cargo xtask setup` installs it): {e}")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The `ftn_*` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(off) = text[i..].find("ftn_") {
        let start = i + off;
        let mut end = start;
        while end < b.len()
            && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_')
        {
            end += 1;
        }
        out.insert(text[start..end].to_string());
        i = end;
    }
    out
}

/// The dashboard's queries.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(dist().join("grafana/ftn-dashboard.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = v["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("a target's expr").to_string())
        .collect()
}

#[test]
fn alert_rules_and_dashboard_are_valid_and_use_only_exported_metrics() {
    let prom = dist().join("prometheus");
    let checked = promtool(&["check", "rules", "ftn-alerts.yml"], &prom);
    assert!(checked.contains("SUCCESS: 13 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "ftn-alerts.test.yml"], &prom);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert of the rules has a test that fires it.
    let rules = std::fs::read_to_string(prom.join("ftn-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(prom.join("ftn-alerts.test.yml")).unwrap();
    for line in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!(
                "alertname: {line}\n        exp_alerts:\n          - exp_labels"
            )),
            "no test of ftn-alerts.test.yml fires {line}"
        );
    }
    // The dashboard's queries, as recording rules: promtool parses each one.
    let exprs = dashboard_exprs();
    let tmp = TempDir(
        std::env::temp_dir().join(format!("ftn-dashboard-{}", ftn_tests::unique_name("d"))),
    );
    std::fs::create_dir_all(tmp.path()).unwrap();
    let mut text = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        text.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    std::fs::write(tmp.path().join("dashboard.yml"), text).unwrap();
    promtool(&["check", "rules", "dashboard.yml"], tmp.path());

    let mut used = metric_names(&rules);
    for e in &exprs {
        used.extend(metric_names(e));
    }
    let ha = Ha::start();
    let scrape = ha.metrics(1);
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter(|l| l.starts_with("ftn_"))
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the rules or the dashboard use metrics a live ftn does not export: {missing:?}\n(exported: {exported:?})"
    );
    eprintln!(
        "{} alert rules and {} dashboard queries use {} metrics, all in a live scrape of {} families",
        13,
        exprs.len(),
        used.len(),
        exported.len()
    );
}
