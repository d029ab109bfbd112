//! akidb: an embedding daemon for robots and edge machines.
//!
//! Crate map (see docs/ARCHITECTURE.md for the invariants):
//! - [`config`]: the TOML configuration, its defaults and validation.
//! - [`engine`]: texts to vectors through ONNX Runtime; synchronous, knows no tokio or actors.
//! - [`protocol`]: the wire format (frames and MessagePack messages), shared by the daemon and its clients.
//! - [`client`]: the async client that `akictl`, the tests and the benchmarks use.
//! - [`monitor`]: device sensors (NVML, sysfs) and the thermal policy.
//! - `actors`: the supervisor, inference actors, batcher and monitor (kameo).
//! - `cache`: the embedding cache that answers repeated inputs at the door of the actors.
//! - `server`: the Unix socket, connections and shutdown.
//! - `telemetry`, `systemd`: logging and service-manager notifications.
//! - `memory`: giving freed memory back to the system when warm and when idle.
//! - [`doctor`]: `akidbd --doctor`, what this machine offers akidbd and what to fix.
//! - [`metrics`]: the `status` figures as Prometheus text (`akictl metrics`, HTTP `/metrics`).

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod config;
pub mod engine;
pub mod protocol;

pub(crate) mod actors;
pub(crate) mod cache;
pub mod client;
pub mod daemon;
pub mod doctor;
pub mod memory;
pub mod metrics;
pub mod monitor;
pub(crate) mod server;
pub(crate) mod systemd;
pub mod telemetry;

/// Resolves at the first SIGTERM or SIGINT, with the signal's name (the daemon's production shutdown trigger).
pub async fn server_signal() -> &'static str {
    server::shutdown::signal_received().await
}
