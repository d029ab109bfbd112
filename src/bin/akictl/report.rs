//! Rendering of the daemon's status: the 80-column screen of `akictl status` and Prometheus text.

use std::fmt::Write;
use std::path::Path;

use akidb::protocol::message::{SensorStatus, StatusBody};

/// The `akictl status` screen; no line is longer than 80 columns. Its sections, top to bottom: the header (daemon,
/// socket, models), the devices, the queues and their latency, the totals.
pub fn status_screen(status: &StatusBody, socket: &Path) -> String {
    let mut out = String::new();
    header_section(&mut out, status, socket);
    let _ = writeln!(out);
    devices_section(&mut out, status);
    let _ = writeln!(out);
    queues_section(&mut out, status);
    let _ = writeln!(out);
    totals_section(&mut out, status);
    out
}

/// The daemon's version, state and uptime, its socket and its models.
fn header_section(out: &mut String, status: &StatusBody, socket: &Path) {
    let uptime = format_duration(status.uptime_s);
    let _ = writeln!(out, "akidbd {}  {}  up {uptime}", status.version, status.status.to_uppercase());
    let _ = writeln!(out, "socket  {}", clip(&socket.display().to_string(), 72));
    let model = &status.model;
    let _ = writeln!(
        out,
        "model   {} (dim {}, max {} tokens, {} pooling)",
        clip(&model.name, 32),
        model.dim,
        model.max_tokens,
        model.pooling
    );
    if status.models.len() > 1 {
        let _ = writeln!(out, "{}", models_table(status));
    }
}

/// One line per device, with its sensors, sessions and last error under it.
fn devices_section(out: &mut String, status: &StatusBody) {
    let _ = writeln!(
        out,
        "{:<4}{:<10}{:<15}{:<11}{:>9}{:>10}{:>12}",
        "DEV", "KIND", "EP/PRECISION", "STATE", "RESTARTS", "BATCHES", "INPUTS"
    );
    for device in &status.devices {
        let _ = writeln!(
            out,
            "{:<4}{:<10}{:<15}{:<11}{:>9}{:>10}{:>12}",
            device.index,
            clip(&device.kind, 9),
            clip(&ep_precision(device), 14),
            clip(&device.state, 10),
            device.restarts,
            device.batches,
            device.inputs
        );
        if let Some(sensors) = &device.sensors {
            let _ = writeln!(out, "    {}", clip(&sensor_line(sensors), 76));
        }
        if !device.sessions.is_empty() {
            let sessions: Vec<String> = device
                .sessions
                .iter()
                .map(|s| format!("{} {:.0} MB", clip(&s.model, 20), s.memory_bytes as f64 / 1e6))
                .collect();
            let _ = writeln!(out, "    {}", clip(&format!("sessions: {}", sessions.join(", ")), 76));
        }
        if let Some(error) = &device.last_error {
            let _ = writeln!(out, "    last error: {}", clip(error, 64));
        }
    }
}

/// One line per priority class (queued, requests, latency percentiles), then the cache, the realtime bound and
/// the thermal state.
fn queues_section(out: &mut String, status: &StatusBody) {
    let _ = writeln!(
        out,
        "{:<10}{:>8}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "CLASS", "QUEUED", "REQS/60s", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for class in ["realtime", "normal", "bulk"] {
        let queued = status.queues.get(class).copied().unwrap_or(0);
        let p = status.latency_ms.get(class).copied().unwrap_or_default();
        let _ = writeln!(
            out,
            "{class:<10}{queued:>8}{:>10}{:>10.1}{:>10.1}{:>10.1}{:>10.1}",
            p.count, p.p50, p.p95, p.p99, p.max
        );
    }
    let _ = writeln!(out, "{}", cache_line(&status.cache));
    let realtime = &status.realtime;
    if let Some(smallest) = realtime.smallest_batch_ms {
        let verdict = if realtime.achievable {
            "holds".to_owned()
        } else {
            format!("CANNOT hold, expect <= {:.0} ms", realtime.achievable_ms.unwrap_or(smallest))
        };
        let line = format!(
            "realtime    bound {} ms {verdict} (short input alone {smallest:.1} ms)",
            realtime.bound_ms
        );
        let _ = writeln!(out, "{}", clip(&line, 80));
    }
    let thermal = &status.thermal;
    let hottest = thermal.hottest_c.map_or("unknown".to_owned(), |t| format!("{t:.1} C"));
    let _ = writeln!(
        out,
        "thermal     {}  hottest {hottest}  (soft {:.0} C, hard {:.0} C)",
        thermal.state, thermal.soft_c, thermal.hard_c
    );
}

/// Throughput, batching, totals and errors by code.
fn totals_section(out: &mut String, status: &StatusBody) {
    let t = &status.throughput;
    let _ = writeln!(
        out,
        "throughput  {:.1} req/s  {:.1} inputs/s  (last {:.0} s)",
        t.requests_per_s, t.inputs_per_s, t.window_s
    );
    let _ = writeln!(
        out,
        "batches     {}  mean size {:.1}  padding ratio {:.2}",
        status.counters.batches, status.mean_batch_size, status.padding_ratio
    );
    let c = &status.counters;
    let _ = writeln!(
        out,
        "totals      {} requests  {} inputs  {} tokens  {} connections",
        c.requests, c.inputs, c.tokens, c.connections
    );
    let errors: Vec<String> = c.errors.iter().map(|(code, n)| format!("{code} {n}")).collect();
    let errors = if errors.is_empty() { "none".to_owned() } else { errors.join(", ") };
    let _ = writeln!(out, "errors      {}", clip(&errors, 68));
}

/// One line per served model: its queues, latency (normal class), devices and cache hit ratio.
fn models_table(status: &StatusBody) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<22}{:>5}{:>7}{:>8}{:>10}{:>9}{:>9}{:>8}",
        "MODEL", "DIM", "DEVS", "QUEUED", "REQS/60s", "p50 ms", "p99 ms", "HIT%"
    );
    for model in &status.models {
        let queued: u64 = model.queues.values().sum();
        let requests: u64 = model.latency_ms.values().map(|p| p.count).sum();
        let normal = model.latency_ms.get("normal").copied().unwrap_or_default();
        let devices: Vec<String> = model.devices.iter().map(u64::to_string).collect();
        let looked_up = model.cache.hits + model.cache.misses;
        let hit = if looked_up == 0 {
            "-".to_owned()
        } else {
            format!("{:.0}%", 100.0 * model.cache.hits as f64 / looked_up as f64)
        };
        let _ = writeln!(
            out,
            "{:<22}{:>5}{:>7}{queued:>8}{requests:>10}{:>9.1}{:>9.1}{hit:>8}",
            clip(&model.name, 21),
            model.dim,
            clip(&devices.join(","), 6),
            normal.p50,
            normal.p99
        );
    }
    out.trim_end().to_owned()
}

/// "temp 61.2 C  power 8.0/15.0 W  util 35%  sm 918 MHz  mem 812 MiB [nvml+sysfs]", or why it is unknown.
fn sensor_line(sensors: &SensorStatus) -> String {
    let mut parts = Vec::new();
    if let Some(t) = sensors.temperature_c {
        parts.push(format!("temp {t:.1} C"));
    }
    match (sensors.power_w, sensors.power_limit_w) {
        (Some(p), Some(limit)) => parts.push(format!("power {p:.1}/{limit:.0} W")),
        (Some(p), None) => parts.push(format!("power {p:.1} W")),
        _ => {}
    }
    if let Some(u) = sensors.utilization_pct {
        parts.push(format!("util {u:.0}%"));
    }
    if let Some(c) = sensors.sm_clock_mhz {
        parts.push(format!("sm {c:.0} MHz"));
    }
    if let Some(m) = sensors.memory_used_mib {
        parts.push(format!("mem {m:.0} MiB"));
    }
    if parts.is_empty() {
        return format!("sensors unknown: {}", sensors.unknown.as_deref().unwrap_or("no reading"));
    }
    format!("{} [{}]", parts.join("  "), sensors.source)
}

/// "cache  hit ratio 87.5% (7/8)  1,024 entries  1.6/32.0 MiB  0 evicted", or "cache  off".
fn cache_line(cache: &akidb::protocol::message::CacheStats) -> String {
    if !cache.enabled {
        return "cache       off (cache.max_bytes = 0)".to_owned();
    }
    let looked = cache.hits + cache.misses;
    let ratio = if looked == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}%", 100.0 * cache.hits as f64 / looked as f64)
    };
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    format!(
        "cache       hit ratio {ratio} ({}/{looked})  {} entries  {:.1}/{:.1} MiB  {} evicted",
        cache.hits,
        cache.entries,
        mib(cache.bytes),
        mib(cache.max_bytes),
        cache.evictions
    )
}

/// "tensorrt/fp16": the provider in use and its precision ("-" before the session is built).
fn ep_precision(device: &akidb::protocol::message::DeviceStatus) -> String {
    match (device.ep.as_str(), &device.precision) {
        ("", _) => "-".to_owned(),
        (ep, Some(precision)) => format!("{ep}/{precision}"),
        (ep, None) => ep.to_owned(),
    }
}

fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut clipped: String = text.chars().take(width.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
}

fn format_duration(secs: f64) -> String {
    let secs = secs as u64;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}
