//! The daemon's figures in Prometheus / OpenMetrics text, from one `status` snapshot.
//!
//! One encoder for both places that expose them: `akictl metrics` (for node_exporter's textfile collector) and
//! the HTTP surface's `GET /metrics` (for a Prometheus scrape). The text itself is written by the
//! prometheus-client crate, so escaping, types and the `_total` suffix of counters follow the format exactly.
//! That crate writes OpenMetrics only; [`tidy`] turns it into Prometheus' classic text format 0.0.4 where that is
//! what the reader parses (node_exporter's textfile collector, a scraper that does not ask for OpenMetrics), and
//! sorts each family's series (the crate keeps them in hash maps: their order changed from scrape to scrape).
//! This module only maps a [`StatusBody`] onto metrics; it reads no state of its own.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::protocol::message::{CacheStats, StatusBody};

/// The two text formats Prometheus reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (what a Prometheus server asks for first).
    OpenMetrics,
    /// Prometheus' classic text format 0.0.4 (node_exporter's textfile collector, plain HTTP clients): a
    /// counter's `# HELP`/`# TYPE` name its `_total` samples, no `# EOF`.
    Classic,
}

impl Format {
    /// The HTTP content type of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// Every figure of `status` as metrics named `akidb_*`, in `format`.
pub fn prometheus_text(status: &StatusBody, format: Format) -> String {
    let mut registry = Registry::with_prefix("akidb");
    let ready = if status.status == "ready" { 1.0 } else { 0.0 };
    gauge(&mut registry, "up", "1 when the daemon is ready", ready);
    gauge(&mut registry, "uptime_seconds", "Seconds since the daemon started", status.uptime_s);
    let c = &status.counters;
    counter(&mut registry, "requests", "Requests answered", c.requests);
    counter(&mut registry, "inputs", "Inputs embedded", c.inputs);
    counter(&mut registry, "tokens", "Tokens embedded", c.tokens);
    counter(&mut registry, "batches", "Batches run", c.batches);
    counter(
        &mut registry,
        "late_inputs",
        "Inputs computed after their caller stopped waiting (wasted work)",
        c.late_inputs,
    );
    counter(&mut registry, "connections", "Connections accepted", c.connections);
    let errors = Family::<Labels, FloatCounter>::default();
    for (code, n) in &c.errors {
        errors.get_or_create(&labels(&[("code", code)])).inc_by(*n as f64);
    }
    registry.register("errors", "Error replies by code", errors);
    let queues = Family::<Labels, FloatGauge>::default();
    for (class, n) in &status.queues {
        queues.get_or_create(&labels(&[("class", class)])).set(*n as f64);
    }
    registry.register("queued_inputs", "Inputs waiting per priority class", queues);
    let latency = Family::<Labels, FloatGauge>::default();
    for (class, p) in &status.latency_ms {
        for (quantile, value) in [("0.5", p.p50), ("0.95", p.p95), ("0.99", p.p99), ("1", p.max)] {
            latency
                .get_or_create(&labels(&[("class", class), ("quantile", quantile)]))
                .set(value / 1000.0);
        }
    }
    registry.register("latency_seconds", "Request latency quantiles over the last 60 s", latency);
    gauge(&mut registry, "padding_ratio", "Padded tokens per real token", status.padding_ratio);
    gauge(&mut registry, "mean_batch_size", "Mean inputs per batch", status.mean_batch_size);
    register_devices(&mut registry, status);
    register_models(&mut registry, status);
    register_cache(&mut registry, &status.cache);
    let thermal = match status.thermal.state.as_str() {
        "hard" => 2.0,
        "soft" => 1.0,
        _ => 0.0,
    };
    gauge(&mut registry, "thermal_state", "0 normal, 1 soft, 2 hard", thermal);
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    tidy(&out, format)
}

/// The embedding cache's counters and size.
fn register_cache(registry: &mut Registry, cache: &CacheStats) {
    counter(registry, "cache_hits", "Inputs answered from the embedding cache", cache.hits);
    counter(
        registry,
        "cache_misses",
        "Inputs looked up in the embedding cache and computed",
        cache.misses,
    );
    counter(
        registry,
        "cache_evictions",
        "Embedding cache entries evicted to make room",
        cache.evictions,
    );
    gauge(registry, "cache_entries", "Vectors in the embedding cache", cache.entries as f64);
    gauge(registry, "cache_bytes", "Bytes the embedding cache holds", cache.bytes as f64);
}

/// Sorts the series of each family and, for [`Format::Classic`], renames counter families to their samples'
/// `_total` name and drops what the classic format does not have (`# UNIT`, `# EOF`).
fn tidy(openmetrics: &str, format: Format) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    let mut series: Vec<&str> = Vec::new();
    let flush = |out: &mut String, series: &mut Vec<&str>| {
        series.sort_unstable();
        for line in series.drain(..) {
            out.push_str(line);
            out.push('\n');
        }
    };
    for line in openmetrics.lines() {
        let Some(comment) = line.strip_prefix("# ") else {
            series.push(line);
            continue;
        };
        flush(&mut out, &mut series);
        if format == Format::Classic {
            let (keyword, rest) = comment.split_once(' ').unwrap_or((comment, ""));
            if keyword == "EOF" || keyword == "UNIT" {
                continue;
            }
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(&format!("# {keyword} {name}_total {tail}\n"));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    flush(&mut out, &mut series);
    out
}

fn register_devices(registry: &mut Registry, status: &StatusBody) {
    let batches = Family::<Labels, FloatCounter>::default();
    let restarts = Family::<Labels, FloatCounter>::default();
    let temperature = Family::<Labels, FloatGauge>::default();
    let power = Family::<Labels, FloatGauge>::default();
    for d in &status.devices {
        let index = d.index.to_string();
        let device = labels(&[("device", &index), ("kind", &d.kind), ("ep", &d.ep)]);
        batches.get_or_create(&device).inc_by(d.batches as f64);
        restarts.get_or_create(&device).inc_by(d.restarts as f64);
        let sensors = d.sensors.as_ref();
        if let Some(t) = sensors.and_then(|s| s.temperature_c) {
            temperature.get_or_create(&labels(&[("device", &index)])).set(t);
        }
        if let Some(p) = sensors.and_then(|s| s.power_w) {
            power.get_or_create(&labels(&[("device", &index)])).set(p);
        }
    }
    registry.register("device_batches", "Batches run per device", batches);
    registry.register("device_restarts", "Inference actor restarts per device", restarts);
    registry.register(
        "device_temperature_celsius",
        "Device temperature (absent when unknown)",
        temperature,
    );
    registry.register("device_power_watts", "Device power draw (absent when unknown)", power);
}

/// Per served model (label `model`): queued inputs and latency per class, cache hits, misses, entries, bytes,
/// and each device session's memory.
fn register_models(registry: &mut Registry, status: &StatusBody) {
    let queued = Family::<Labels, FloatGauge>::default();
    let latency = Family::<Labels, FloatGauge>::default();
    let requests = Family::<Labels, FloatGauge>::default();
    let hits = Family::<Labels, FloatCounter>::default();
    let misses = Family::<Labels, FloatCounter>::default();
    let entries = Family::<Labels, FloatGauge>::default();
    let bytes = Family::<Labels, FloatGauge>::default();
    for m in &status.models {
        for (class, n) in &m.queues {
            queued
                .get_or_create(&labels(&[("model", &m.name), ("class", class)]))
                .set(*n as f64);
        }
        for (class, p) in &m.latency_ms {
            requests
                .get_or_create(&labels(&[("model", &m.name), ("class", class)]))
                .set(p.count as f64);
            for (quantile, value) in [("0.5", p.p50), ("0.99", p.p99)] {
                latency
                    .get_or_create(&labels(&[("model", &m.name), ("class", class), ("quantile", quantile)]))
                    .set(value / 1000.0);
            }
        }
        let model = labels(&[("model", &m.name)]);
        hits.get_or_create(&model).inc_by(m.cache.hits as f64);
        misses.get_or_create(&model).inc_by(m.cache.misses as f64);
        entries.get_or_create(&model).set(m.cache.entries as f64);
        bytes.get_or_create(&model).set(m.cache.bytes as f64);
    }
    let memory = Family::<Labels, FloatGauge>::default();
    for d in &status.devices {
        for s in &d.sessions {
            memory
                .get_or_create(&labels(&[("device", &d.index.to_string()), ("model", &s.model)]))
                .set(s.memory_bytes as f64);
        }
    }
    registry.register("model_queued_inputs", "Inputs waiting per model and priority class", queued);
    registry.register(
        "model_latency_seconds",
        "Request latency quantiles per model and class over the last 60 s",
        latency,
    );
    registry.register(
        "model_window_requests",
        "Requests served per model and class over the last 60 s",
        requests,
    );
    registry.register("model_cache_hits", "Inputs of this model answered from the embedding cache", hits);
    registry.register("model_cache_misses", "Inputs of this model looked up and computed", misses);
    registry.register("model_cache_entries", "Vectors of this model in the embedding cache", entries);
    registry.register("model_cache_bytes", "Bytes this model's vectors take in the embedding cache", bytes);
    registry.register(
        "session_memory_bytes",
        "Resident memory each device's session of a model added when it was built and warmed up",
        memory,
    );
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let metric = FloatGauge::default();
    metric.set(value);
    registry.register(name, help, metric);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric = FloatCounter::default();
    metric.inc_by(value as f64);
    registry.register(name, help, metric);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::{DeviceStatus, Percentiles};

    #[test]
    fn every_figure_is_encoded_with_labels_escaped() {
        let mut status = StatusBody {
            status: "ready".into(),
            ..StatusBody::default()
        };
        status.counters.requests = 7;
        status.counters.errors.insert("invalid_request".into(), 2);
        status.queues.insert("realtime".into(), 3);
        status.latency_ms.insert(
            "normal".into(),
            Percentiles {
                count: 1,
                p50: 2.0,
                p95: 3.0,
                p99: 4.0,
                max: 5.0,
            },
        );
        status.devices.push(DeviceStatus {
            index: 0,
            kind: "cpu".into(),
            ep: "odd \"ep\"".into(),
            batches: 9,
            ..DeviceStatus::default()
        });
        let text = prometheus_text(&status, Format::OpenMetrics);
        for needle in [
            "akidb_up 1.0",
            "akidb_requests_total 7.0",
            "akidb_errors_total{code=\"invalid_request\"} 2.0",
            "akidb_queued_inputs{class=\"realtime\"} 3.0",
            "akidb_latency_seconds{class=\"normal\",quantile=\"0.99\"} 0.004",
            "akidb_device_batches_total{device=\"0\",kind=\"cpu\",ep=\"odd \\\"ep\\\"\"} 9.0",
            "# EOF",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn the_classic_format_names_counter_families_as_their_samples_and_series_are_sorted() {
        let mut status = StatusBody {
            status: "ready".into(),
            ..StatusBody::default()
        };
        status.counters.requests = 7;
        for (code, n) in [("unknown_model", 1), ("invalid_request", 2), ("overloaded", 3)] {
            status.counters.errors.insert(code.into(), n);
        }
        let classic = prometheus_text(&status, Format::Classic);
        assert!(classic.contains("# HELP akidb_requests_total Requests answered.\n# TYPE akidb_requests_total counter\n"));
        assert!(classic.contains("# TYPE akidb_up gauge\n"));
        assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"));
        // Every sample line belongs to the family its # TYPE line names.
        let mut family = "";
        for line in classic.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap();
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, family, "{line}");
            }
        }
        let errors: Vec<&str> = classic.lines().filter(|l| l.starts_with("akidb_errors_total{")).collect();
        let mut sorted = errors.clone();
        sorted.sort_unstable();
        assert_eq!(errors, sorted);
        assert_eq!(errors.len(), 3);
        assert_eq!(
            prometheus_text(&status, Format::OpenMetrics),
            prometheus_text(&status, Format::OpenMetrics)
        );
    }
}
