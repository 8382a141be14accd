//! `cargo xtask deb`: the Debian package, built by cargo-deb from `[package.metadata.deb]` of
//! ftn-controller/Cargo.toml, then checked.
//!
//! Before cargo-deb runs, the generated assets go to `target/deb-assets/`: the shell completions
//! (`ftn completions bash|zsh|fish`) and the man pages (`ftn man DIR`) from the release binary's
//! own clap definitions, the systemd unit with the package's binary path (`/usr/bin/ftn`
//! instead of `/usr/local/bin/ftn`), and the postinst that creates the state directory.
//!
//! The check extracts the package into a temporary directory (nothing is installed on this
//! machine) and requires: the binary, the example configuration as a conffile, the unit, the
//! completions, a man page per command, the docs; that the unit is neither enabled nor started by
//! the maintainer scripts; and that the packaged `ftn check-config` accepts the packaged
//! `/etc/ftn/ftn.toml`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use crate::{step, Cmd};

/// The cargo-deb release the task installs when `cargo deb` is missing.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// The postinst: the state directory (the unit's StateDirectory= would create it at the first
/// start; the package makes it exist from the install on), and the API token the example
/// configuration names, made once (never a conffile: each gateway's own secret).
const POSTINST: &str = "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n    install -d -m 0700 /var/lib/ftn\n    if [ ! -e /etc/ftn/token ]; then\n        (umask 077; head -c 32 /dev/urandom | base64 > /etc/ftn/token)\n    fi\nfi\n#DEBHELPER#\n";

/// Builds the package (the release binary must be built) and checks it; returns its path.
pub(crate) fn run(root: &Path) -> Result<PathBuf> {
    if Cmd::new("cargo", &["deb", "--version"]).output().is_err() {
        step(&format!(
            "cargo-deb: not found; installing cargo-deb {CARGO_DEB_VERSION} with cargo (a few minutes)"
        ));
        Cmd::new(
            "cargo",
            &[
                "install",
                "--locked",
                "cargo-deb",
                "--version",
                CARGO_DEB_VERSION,
            ],
        )
        .run()?;
    }
    let ftn = root.join("target/release/ftn");
    let ftn_s = ftn.to_str().context("target path is not UTF-8")?;
    let assets = root.join("target/deb-assets");
    if assets.exists() {
        std::fs::remove_dir_all(&assets)
            .with_context(|| format!("removing {}", assets.display()))?;
    }
    for d in ["completions", "man", "systemd", "scripts"] {
        std::fs::create_dir_all(assets.join(d))?;
    }
    for (shell, file) in [("bash", "ftn.bash"), ("zsh", "_ftn"), ("fish", "ftn.fish")] {
        let text = Cmd::new(ftn_s, &["completions", shell]).output()?;
        std::fs::write(assets.join("completions").join(file), text)?;
    }
    let man = assets.join("man");
    Cmd::new(ftn_s, &["man", man.to_str().context("path is not UTF-8")?]).output()?;
    let unit = std::fs::read_to_string(root.join("dist/ftn.service"))?;
    if !unit.contains("ExecStart=/usr/local/bin/ftn ") {
        bail!(
            "dist/ftn.service no longer runs /usr/local/bin/ftn: update the package's unit rewrite"
        );
    }
    let unit = unit.replace("/usr/local/bin/ftn", "/usr/bin/ftn").replace(
        "# Install (docs/OPERATIONS.md has the whole procedure):",
        "# Installed by the ftn Debian package (not enabled, not started). By hand instead:",
    );
    std::fs::write(assets.join("systemd/ftn.service"), unit)?;
    std::fs::write(assets.join("scripts/postinst"), POSTINST)?;
    let out = Cmd::new(
        "cargo",
        &[
            "deb",
            "--package",
            "ftn-controller",
            "--no-build",
            "--locked",
        ],
    )
    .output()?;
    let deb = PathBuf::from(
        out.lines()
            .rev()
            .find(|l| l.trim_end().ends_with(".deb"))
            .context("cargo deb printed no .deb path")?
            .trim(),
    );
    check(&deb)?;
    Ok(deb)
}

/// Extracts `deb` into a temporary directory and checks what it holds (see the module doc).
pub(crate) fn check(deb: &Path) -> Result<()> {
    let deb_s = deb.to_str().context("path is not UTF-8")?;
    let name = deb
        .file_name()
        .and_then(|n| n.to_str())
        .context("no file name")?;
    if !(name.starts_with("ftn_") && name.ends_with("_amd64.deb")) {
        bail!("{name}: expected ftn_<version>_amd64.deb");
    }
    let tmp = std::env::temp_dir().join(format!("ftn-deb-check.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = check_in(deb_s, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn check_in(deb: &str, tmp: &Path) -> Result<()> {
    let tmp_s = tmp.to_str().context("path is not UTF-8")?;
    Cmd::new("dpkg-deb", &["-x", deb, tmp_s]).output()?;
    let control = tmp.join("DEBIAN");
    Cmd::new("dpkg-deb", &["-e", deb, control.to_str().unwrap()]).output()?;
    for f in [
        "usr/bin/ftn",
        "etc/ftn/ftn.toml",
        "usr/share/doc/ftn/examples/ftn-etcd.toml",
        "usr/share/doc/ftn/README.md",
        "usr/share/doc/ftn/OPERATIONS.md",
        "usr/share/doc/ftn/CONFIG.md",
        "usr/share/bash-completion/completions/ftn",
        "usr/share/zsh/vendor-completions/_ftn",
        "usr/share/fish/vendor_completions.d/ftn.fish",
        "usr/share/man/man1/ftn.1.gz",
        "usr/share/man/man1/ftn-run.1.gz",
        "usr/share/man/man1/ftn-status.1.gz",
        "usr/share/man/man1/ftn-detach.1.gz",
        "usr/lib/systemd/system/ftn.service",
    ] {
        if !tmp.join(f).exists() {
            bail!("{deb}: /{f} is missing");
        }
    }
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap_or_default();
    if !conffiles.lines().any(|l| l.trim() == "/etc/ftn/ftn.toml") {
        bail!("{deb}: /etc/ftn/ftn.toml is not a conffile (conffiles: {conffiles:?})");
    }
    let unit = std::fs::read_to_string(tmp.join("usr/lib/systemd/system/ftn.service"))?;
    if !unit.contains("ExecStart=/usr/bin/ftn run") {
        bail!("{deb}: the unit does not run /usr/bin/ftn");
    }
    for script in ["postinst", "prerm", "postrm"] {
        let text = std::fs::read_to_string(control.join(script)).unwrap_or_default();
        for verb in [
            "systemctl start",
            "systemctl enable",
            "deb-systemd-invoke start",
        ] {
            if text.contains(verb) {
                bail!("{deb}: {script} runs `{verb}`: installing must not start the gateway");
            }
        }
    }
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap_or_default();
    if !postinst.contains("install -d -m 0700 /var/lib/ftn") {
        bail!("{deb}: the postinst does not create /var/lib/ftn");
    }
    if !postinst.contains("/etc/ftn/token") {
        bail!("{deb}: the postinst does not make the API token the example names");
    }
    // Not installed here: the example's /etc/ftn/token (the postinst makes it) is pointed at a
    // token in the extracted tree.
    let ftn = tmp.join("usr/bin/ftn");
    let token = tmp.join("etc/ftn/token");
    std::fs::write(&token, "check-token-0123456789\n")?;
    let example = tmp.join("etc/ftn/ftn-check.toml");
    let text = std::fs::read_to_string(tmp.join("etc/ftn/ftn.toml"))?;
    if !text.contains("token_file = \"/etc/ftn/token\"") {
        bail!("{deb}: the example no longer names /etc/ftn/token: update the postinst");
    }
    std::fs::write(
        &example,
        text.replace("/etc/ftn/token", token.to_str().unwrap()),
    )?;
    let out = Cmd::new(
        ftn.to_str().unwrap(),
        &["check-config", example.to_str().unwrap()],
    )
    .output()
    .context("the packaged ftn check-config refused the packaged /etc/ftn/ftn.toml")?;
    step(&format!(
        "deb: {deb} holds the binary, the conffile, the unit (not enabled, not started), completions, man pages and docs; its `ftn check-config /etc/ftn/ftn.toml`: {}",
        out.lines().next().unwrap_or("").trim()
    ));
    Ok(())
}
