//! The admin API (HTTP/1.1, JSON), Prometheus `/metrics`, and the small client the CLI uses.
//!
//! Reads are open to whoever can reach the listener (loopback by default). Changes (`POST`)
//! need `Authorization: Bearer <token>` with the configured token; without a configured token
//! they are refused. Every input is validated; errors are `{"error": "..."}` with a 4xx status
//! for the caller's mistakes and 5xx for ours.
//!
//! | method | path | body / query | answer |
//! |---|---|---|---|
//! | GET | `/v1/status` | | resources, servers, checks, counters of the controller |
//! | GET | `/v1/events` | `?after=SEQ&limit=N` (N ≤ 10000, default 100) | events, oldest first |
//! | POST | `/v1/switchover` | `{"resource": "web", "to": "b1"}` | what moved |
//! | POST | `/v1/drain` | `{"server": "p1"}` | what moved |
//! | POST | `/v1/undrain` | `{"server": "p1"}` | what moved |
//! | POST | `/v1/reload` | | what changed, or why the file was refused |
//! | GET | `/v1/config` | | the running configuration (never the token) |
//! | GET | `/metrics` | | OpenMetrics text (Prometheus reads it) |
//! | GET | `/healthz` | | `ok` while the engine task answers |
//!
//! Layout: [`types`] holds the wire types (a leaf: the CLI, the server and the controller use
//! them), [`server`] the listener, router and handlers, [`metrics`] the Prometheus exposition,
//! [`client`] the CLI's HTTP client.

pub mod client;
pub mod metrics;
pub mod server;
pub mod worker;

pub use crate::wire::{Done, ErrorBody, ServerBody, SwitchoverBody};
pub use client::call;
pub use server::{router, serve, ApiLimits, ApiState, ListenerStats, MAX_EVENTS};
