//! `akictl bench`: a load generator over real connections, bounded in time and request count.
//!
//! Closed loop by default: each of `--concurrency` connections keeps `--depth` requests in flight (pipelining).
//! With `--rate R` it is open loop: the connections together send R requests per second on a fixed schedule,
//! whatever the replies do (still at most `--depth` in flight per connection; sends that this cap holds back are
//! reported as `held_back`). Each request's class comes from `--mix`, its texts from `--texts FILE` or generated
//! sentences of `--words MIN-MAX` words.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use akidb::client::{check, decode_embed, embed_request, Client, ClientError, EmbedParams, Priority, RawReply, RequestWriter};
use akidb::protocol::message::Percentiles;
use clap::Args;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Options of `akictl bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Connections, each its own client.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Requests in flight per connection (pipelining).
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// Stop sending after this many seconds (at most 3600).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many requests in all.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Inputs per request.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Class weights, e.g. "realtime=1,normal=8,bulk=1", or one class name.
    #[arg(long, default_value = "normal")]
    pub mix: String,
    /// A file of texts, one per line (else generated sentences).
    #[arg(long, value_name = "FILE")]
    pub texts: Option<PathBuf>,
    /// Generated sentence length range in words, e.g. "8-16".
    #[arg(long, default_value = "8-16")]
    pub words: String,
    /// Per-request deadline in ms.
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// The daemon's socket (filled in from the global --socket).
    #[arg(skip)]
    pub socket: Option<PathBuf>,
    /// Open loop: send this many requests per second in all, on a fixed schedule.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Reconnect after this many requests on a connection (client churn; 0 = never).
    #[arg(long, default_value_t = 0)]
    pub churn: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Let the embedding cache answer repeated texts (off by default: the bench measures inference).
    #[arg(long)]
    pub cache: bool,
    /// The model to load, by name (default: the daemon's default model).
    #[arg(long)]
    pub model: Option<String>,
}

/// What a bench run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub connections: usize,
    pub depth: usize,
    pub batch: usize,
    pub elapsed_s: f64,
    pub requests: u64,
    /// Requests sent per second (the offered load).
    pub offered_per_s: f64,
    /// Open loop: sends that fell due while the connection already had `--depth` requests in flight.
    pub held_back: u64,
    pub ok: u64,
    pub inputs: u64,
    pub tokens: u64,
    pub requests_per_s: f64,
    pub inputs_per_s: f64,
    pub tokens_per_s: f64,
    pub latency_ms: BTreeMap<String, Percentiles>,
    pub errors: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Tally {
    latencies_us: [Vec<u64>; 3],
    ok: u64,
    requests: u64,
    held_back: u64,
    inputs: u64,
    tokens: u64,
    errors: BTreeMap<String, u64>,
}

pub async fn run(socket: &Path, mut args: BenchArgs) -> Result<ExitCode, ClientError> {
    args.socket = Some(socket.to_owned());
    let mix = match parse_mix(&args.mix) {
        Some(mix) => mix,
        None => {
            eprintln!("akictl: --mix must look like \"realtime=1,normal=8,bulk=1\" or name one class");
            return Ok(ExitCode::from(64));
        }
    };
    let texts = match load_texts(&args) {
        Ok(texts) => texts,
        Err(message) => {
            eprintln!("akictl: {message}");
            return Ok(ExitCode::from(64));
        }
    };
    let report = bench(socket, &args, &mix, &texts).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("report serializes"));
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

async fn bench(socket: &Path, args: &BenchArgs, mix: &[Priority], texts: &[String]) -> Result<Report, ClientError> {
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration.clamp(0.01, 3600.0));
    let budget = std::sync::Arc::new(AtomicU64::new(args.requests.unwrap_or(u64::MAX)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for conn in 0..args.concurrency.max(1) {
        let client = Client::connect(socket).await?;
        let (args, mix, texts, budget) = (args.clone(), mix.to_vec(), texts.to_vec(), budget.clone());
        tasks.push(tokio::spawn(async move {
            connection(client, conn, &args, &mix, &texts, deadline, &budget).await
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.map_err(|e| ClientError::Decode(e.to_string()))??;
        for i in 0..3 {
            total.latencies_us[i].extend_from_slice(&tally.latencies_us[i]);
        }
        total.ok += tally.ok;
        total.requests += tally.requests;
        total.held_back += tally.held_back;
        total.inputs += tally.inputs;
        total.tokens += tally.tokens;
        for (code, n) in tally.errors {
            *total.errors.entry(code).or_default() += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut latency_ms = BTreeMap::new();
    for class in Priority::ALL {
        let samples = &mut total.latencies_us[class.index()];
        if !samples.is_empty() {
            latency_ms.insert(class.as_str().to_owned(), percentiles(samples));
        }
    }
    Ok(Report {
        connections: args.concurrency.max(1),
        depth: args.depth.max(1),
        batch: args.batch.max(1),
        elapsed_s: elapsed,
        requests: total.requests,
        offered_per_s: total.requests as f64 / elapsed,
        held_back: total.held_back,
        ok: total.ok,
        inputs: total.inputs,
        tokens: total.tokens,
        requests_per_s: total.ok as f64 / elapsed,
        inputs_per_s: total.inputs as f64 / elapsed,
        tokens_per_s: total.tokens as f64 / elapsed,
        latency_ms,
        errors: total.errors,
    })
}

/// One connection of the load: sends what is due (closed loop: up to `depth` in flight; open loop: on its share of
/// the rate), reconnects every `churn` requests, and counts the replies until the deadline or the budget ends it.
async fn connection(
    client: Client,
    conn: usize,
    args: &BenchArgs,
    mix: &[Priority],
    texts: &[String],
    deadline: Instant,
    budget: &AtomicU64,
) -> Result<Tally, ClientError> {
    let mut load = ConnectionLoad::new(conn, args, mix, texts, deadline, budget);
    let (mut writer, mut replies) = open(client);
    loop {
        if args.churn > 0 && load.on_this_connection >= args.churn && load.in_flight.is_empty() {
            (writer, replies) = open(Client::connect(&client_socket(args)).await?);
            load.on_this_connection = 0;
        }
        load.send_due(&mut writer).await?;
        let sending = load.interval.is_some() && Instant::now() < deadline && budget.load(Ordering::Acquire) > 0;
        if load.in_flight.is_empty() && !sending {
            return Ok(load.tally);
        }
        let reply = if sending {
            tokio::select! {
                reply = replies.recv() => reply,
                _ = tokio::time::sleep_until(load.next_send.min(deadline)) => continue,
            }
        } else {
            replies.recv().await
        };
        load.record(reply.ok_or(ClientError::Closed)??)?;
    }
}

/// One connection's share of the load: what it sends, what it has in flight, what it has counted.
struct ConnectionLoad<'a> {
    args: &'a BenchArgs,
    mix: &'a [Priority],
    texts: &'a [String],
    deadline: Instant,
    budget: &'a AtomicU64,
    /// Open loop: the time between two sends of this connection.
    interval: Option<Duration>,
    next_send: Instant,
    /// Picks the next class and texts.
    counter: usize,
    on_this_connection: u64,
    /// Sent and not yet answered: when, in which class, how many inputs.
    in_flight: HashMap<u64, (Instant, Priority, usize)>,
    tally: Tally,
}

impl<'a> ConnectionLoad<'a> {
    fn new(conn: usize, args: &'a BenchArgs, mix: &'a [Priority], texts: &'a [String], deadline: Instant, budget: &'a AtomicU64) -> Self {
        // Open loop: this connection's share of the rate, its first send offset so that connections interleave.
        let connections = args.concurrency.max(1) as f64;
        let interval = args
            .rate
            .filter(|rate| *rate > 0.0)
            .map(|rate| Duration::from_secs_f64(connections / rate));
        let offset = interval.map_or(Duration::ZERO, |i| i.mul_f64(conn as f64 / connections));
        ConnectionLoad {
            args,
            mix,
            texts,
            deadline,
            budget,
            interval,
            next_send: Instant::now() + offset,
            counter: conn * 7919,
            on_this_connection: 0,
            in_flight: HashMap::new(),
            tally: Tally::default(),
        }
    }

    /// Sends every request that is due now.
    async fn send_due(&mut self, writer: &mut RequestWriter) -> Result<(), ClientError> {
        let (args, depth) = (self.args, self.args.depth.max(1));
        let now = Instant::now();
        while now < self.deadline && (args.churn == 0 || self.on_this_connection < args.churn) {
            if let Some(interval) = self.interval {
                if self.next_send > now {
                    break;
                }
                self.next_send += interval;
                if self.in_flight.len() >= depth {
                    self.tally.held_back += 1;
                    continue;
                }
            } else if self.in_flight.len() >= depth {
                break;
            }
            if !take_one(self.budget) {
                break;
            }
            self.on_this_connection += 1;
            let class = self.mix[self.counter % self.mix.len()];
            let batch: Vec<&String> = (0..args.batch.max(1))
                .map(|i| &self.texts[(self.counter * 31 + i * 17) % self.texts.len()])
                .collect();
            self.counter += 1;
            let params = EmbedParams {
                priority: Some(class),
                deadline_ms: args.deadline_ms,
                cache: (!args.cache).then_some(false),
                model: args.model.clone(),
                ..EmbedParams::default()
            };
            let id = writer.send(embed_request(&batch, &params)).await?;
            self.in_flight.insert(id, (Instant::now(), class, batch.len()));
        }
        Ok(())
    }

    /// Counts one reply: its latency and inputs when it succeeded, its code when the daemon refused it.
    fn record(&mut self, reply: RawReply) -> Result<(), ClientError> {
        let Some((sent, class, n_inputs)) = self.in_flight.remove(&reply.id) else {
            return Err(ClientError::Decode(format!("reply to unknown request {}", reply.id)));
        };
        let tally = &mut self.tally;
        tally.requests += 1;
        match check(reply) {
            Ok(body) => {
                let done = decode_embed(&body)?;
                tally.latencies_us[class.index()].push(sent.elapsed().as_micros() as u64);
                tally.ok += 1;
                tally.inputs += n_inputs as u64;
                tally.tokens += done.reply.tokens;
            }
            Err(ClientError::Server { code, .. }) => *tally.errors.entry(code.as_str().to_owned()).or_default() += 1,
            Err(other) => return Err(other),
        }
        Ok(())
    }
}

/// Splits a connection; a task of its own reads the replies (reading is not cancel-safe) and hands them over.
fn open(client: Client) -> (RequestWriter, mpsc::Receiver<Result<RawReply, ClientError>>) {
    let (writer, mut reader) = client.split();
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let reply = reader.recv().await;
            let failed = reply.is_err();
            if sender.send(reply).await.is_err() || failed {
                return;
            }
        }
    });
    (writer, receiver)
}

fn client_socket(args: &BenchArgs) -> std::path::PathBuf {
    args.socket.clone().expect("set by run()")
}

fn take_one(budget: &AtomicU64) -> bool {
    budget
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

/// "realtime=1,normal=8" → a cycle of classes with those weights; "bulk" → only bulk.
fn parse_mix(text: &str) -> Option<Vec<Priority>> {
    if let Some(class) = Priority::parse(text.trim()) {
        return Some(vec![class]);
    }
    let mut cycle = Vec::new();
    for part in text.split(',') {
        let (name, weight) = part.split_once('=')?;
        let class = Priority::parse(name.trim())?;
        let weight: usize = weight.trim().parse().ok()?;
        cycle.extend(std::iter::repeat_n(class, weight.min(1000)));
    }
    // Interleave so that classes alternate instead of running in blocks.
    let mut interleaved = Vec::with_capacity(cycle.len());
    let mut by_class: Vec<Vec<Priority>> = Priority::ALL
        .iter()
        .map(|c| cycle.iter().copied().filter(|x| x == c).collect())
        .collect();
    while by_class.iter().any(|v| !v.is_empty()) {
        for v in by_class.iter_mut() {
            interleaved.extend(v.pop());
        }
    }
    (!interleaved.is_empty()).then_some(interleaved)
}

const WORDS: &[&str] = &[
    "robot",
    "arm",
    "grasp",
    "the",
    "red",
    "cup",
    "on",
    "table",
    "move",
    "left",
    "camera",
    "sees",
    "a",
    "person",
    "near",
    "door",
    "battery",
    "low",
    "return",
    "to",
    "dock",
    "obstacle",
    "ahead",
    "slow",
    "down",
    "map",
    "kitchen",
    "pick",
    "up",
    "blue",
    "box",
    "navigate",
    "hallway",
    "open",
    "drawer",
    "sensor",
    "reading",
    "high",
    "temperature",
    "warning",
    "lidar",
    "point",
    "cloud",
];

fn load_texts(args: &BenchArgs) -> Result<Vec<String>, String> {
    if let Some(path) = &args.texts {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let texts: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect();
        return if texts.is_empty() {
            Err(format!("{} has no texts", path.display()))
        } else {
            Ok(texts)
        };
    }
    let (min, max) = args
        .words
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<usize>().ok()?, b.trim().parse::<usize>().ok()?)))
        .filter(|(a, b)| *a >= 1 && a <= b)
        .ok_or("--words must look like 8-16")?;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    Ok((0..1024)
        .map(|_| {
            let n = min + (next() as usize) % (max - min + 1);
            (0..n).map(|_| WORDS[(next() as usize) % WORDS.len()]).collect::<Vec<_>>().join(" ")
        })
        .collect())
}

fn percentiles(micros: &mut [u64]) -> Percentiles {
    micros.sort_unstable();
    let at = |q: f64| micros[((q * micros.len() as f64).ceil() as usize).clamp(1, micros.len()) - 1] as f64 / 1000.0;
    Percentiles {
        count: micros.len() as u64,
        p50: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
        max: at(1.0),
    }
}

fn render(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bench: {} connections x depth {}, batch {}, {:.1} s",
        report.connections, report.depth, report.batch, report.elapsed_s
    );
    let _ = writeln!(
        out,
        "ok {} of {} requests  {:.1} req/s  {:.1} inputs/s  {:.0} tokens/s",
        report.ok, report.requests, report.requests_per_s, report.inputs_per_s, report.tokens_per_s
    );
    let _ = writeln!(
        out,
        "{:<10}{:>8}{:>10}{:>10}{:>10}{:>10}",
        "class", "count", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for (class, p) in &report.latency_ms {
        let _ = writeln!(
            out,
            "{class:<10}{:>8}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
            p.count, p.p50, p.p95, p.p99, p.max
        );
    }
    if report.held_back > 0 || report.offered_per_s > report.requests_per_s * 1.05 {
        let _ = writeln!(
            out,
            "offered {:.1} req/s, {} sends held back by --depth",
            report.offered_per_s, report.held_back
        );
    }
    let errors: Vec<String> = report.errors.iter().map(|(c, n)| format!("{c} {n}")).collect();
    let _ = writeln!(
        out,
        "errors: {}",
        if errors.is_empty() { "none".to_owned() } else { errors.join(", ") }
    );
    out
}
