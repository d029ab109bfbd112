//! Integration tests, built as one binary (see docs/ARCHITECTURE.md, "Testing").
//!
//! `engine` runs the in-process engine on the real models; `daemon`, `protocol_errors` and `akictl` start the real
//! `akidbd` binary on a temporary socket and talk to it as clients do.

mod akictl;
mod daemon;
mod engine;
mod hostile;
mod python;
mod systemd;
mod thermal;
mod util;
