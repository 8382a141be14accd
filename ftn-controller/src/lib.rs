//! ftn's controller library: configuration, health checks, the directory, the failover engine,
//! the map-sync task, the control loop and the admin API.
//!
//! Modules are declared in dependency order: each one uses only those above it, never one
//! below (`cargo xtask layout` checks it from the syntax tree, and `cargo xtask lint` runs it), so
//! there is no import cycle:
//!
//! ```text
//! files, logs       leaves: bounded file reads, log set-up
//! model             the shared vocabulary (Protocol, ResourceMatch, Health, Failback, XdpAttachMode)
//! config            the file: types, spans, validation                     <- model, files
//! checks            health checks: probes, hysteresis, the checker        <- config
//! directory         the replicated record: embedded (WAL) or etcd         <- config
//! dataplane         the XDP maps: aya, in-memory, the map-sync task      <- model
//! engine            the pure decision: observations -> plan -> changes    <- directory, dataplane
//! links             interface watcher (netlink)                           <- dataplane
//! wire              the admin API's JSON types (server, CLI and control)  <- dataplane
//! control           the engine task: Controller, cluster view, status     <- all of the above
//! api               HTTP server, /metrics, the CLI's client               <- control (handles)
//! app               the one wiring point: opens, loads, binds, runs       <- everything
//! ```
pub mod files;
pub mod logs;
pub mod model;
pub mod config;
pub mod checks;
pub mod directory;
pub mod dataplane;
pub mod engine;
pub mod links;
pub mod announce;
pub mod wire;
pub mod control;
pub mod api;
pub mod app;
