//! ftn's controller library: configuration, health checks, the directory, the failover engine,
//! the map-sync task, the admin API and the dataplane interface.
pub mod api;
pub mod app;
pub mod checks;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod directory;
pub mod engine;
pub mod etcd;
pub mod files;
pub mod links;
pub mod logs;
