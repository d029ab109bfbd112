//! Integration tests, built as one binary (see docs/ARCHITECTURE.md, "Testing").
//!
//! `engine` runs the in-process engine on the real models; the other modules start the real `akidbd` binary on a
//! temporary socket and talk to it as clients do. Tests that need the test-only fault hooks are compiled with the
//! `fault-injection` feature, which `make test` turns on.

mod akictl;
mod cache;
mod cclient;
mod daemon;
mod decoder;
mod doctor;
mod engine;
mod hostile;
mod http;
mod models;
mod python;
mod quantized;
mod rerank;
mod systemd;
mod tensorrt;
mod thermal;
mod util;
