//! akictl: the companion CLI of akidbd — status, health, embed, info, bench, metrics.
//!
//! Every subcommand talks to the daemon through `akidb::client`, the same code the tests use.
//! Exit codes: 0 ready / success; 1 starting, degraded, or the daemon refused the request; 2 the daemon is
//! unreachable; 64 bad arguments.

mod bench;
mod report;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use akidb::client::{Client, ClientError, EmbedParams, Priority, RerankParams};
use clap::{Parser, Subcommand};

const EXIT_NOT_READY: u8 = 1;
const EXIT_UNREACHABLE: u8 = 2;
const EXIT_USAGE: u8 = 64;

/// Talk to a running akidbd.
#[derive(Debug, Parser)]
#[command(name = "akictl", version, about = "Companion CLI of the akidb embedding daemon")]
struct Args {
    /// The daemon's socket (default: the daemon's default, $XDG_RUNTIME_DIR/akidb/embed.sock).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One screen: model, devices, queues, throughput, latency, errors. Exit 0 ready, 1 not ready, 2 unreachable.
    Status {
        /// Print the daemon's status as JSON.
        #[arg(long)]
        json: bool,
        /// Redraw every SECS seconds.
        #[arg(long, value_name = "SECS")]
        watch: Option<f64>,
    },
    /// Exit status only: 0 ready, 1 starting/degraded/stopping, 2 unreachable.
    Health,
    /// Model and limits, as JSON.
    Info,
    /// Embed texts (arguments, or one per stdin line); prints one JSON object per text.
    Embed {
        /// Texts; none: read stdin, one text per line.
        texts: Vec<String>,
        /// realtime | normal | bulk.
        #[arg(long, default_value = "normal")]
        priority: String,
        /// Keep the first N dimensions.
        #[arg(long)]
        dimensions: Option<u64>,
        /// Normalize (true/false; default: the model's setting).
        #[arg(long)]
        normalize: Option<bool>,
        /// Fail on over-long inputs instead of truncating.
        #[arg(long)]
        no_truncate: bool,
        /// Put one of the model's prompts (see `akictl info`) before every text, e.g. `query`.
        #[arg(long, conflicts_with = "prompt")]
        prompt_name: Option<String>,
        /// Put this literal prompt before every text ("" for none, overriding a default prompt).
        #[arg(long)]
        prompt: Option<String>,
        /// The model, by name (default: the daemon's default model).
        #[arg(long)]
        model: Option<String>,
        /// Bypass the embedding cache.
        #[arg(long)]
        no_cache: bool,
        /// Texts per request when reading stdin.
        #[arg(long, default_value_t = 32)]
        batch: usize,
    },
    /// Rerank documents (arguments after the query, or one per stdin line) against a query with a reranker;
    /// prints one JSON object per result, best first: {"index", "score", "document"}.
    Rerank(RerankArgs),
    /// Load generator: bounded in time and count; reports throughput, latency per class and errors.
    Bench(bench::BenchArgs),
    /// The status figures as Prometheus text: the classic format 0.0.4 (what node_exporter's textfile collector
    /// reads), or OpenMetrics.
    Metrics {
        /// Write OpenMetrics 1.0 text instead of the classic format.
        #[arg(long)]
        openmetrics: bool,
    },
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            // Help and version go to stdout with status 0; usage errors exit with EXIT_USAGE, not clap's 2.
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    let socket = args.socket.clone().unwrap_or_else(akidb::config::default_socket_path);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(args.command, &socket))
}

async fn run(command: Command, socket: &Path) -> ExitCode {
    let result = match command {
        Command::Status { json, watch } => status(socket, json, watch).await,
        Command::Health => health(socket).await,
        Command::Info => info(socket).await,
        Command::Embed {
            texts,
            priority,
            dimensions,
            normalize,
            no_truncate,
            prompt_name,
            prompt,
            model,
            no_cache,
            batch,
        } => {
            let Some(priority) = Priority::parse(&priority) else {
                eprintln!("akictl: --priority must be realtime, normal or bulk");
                return ExitCode::from(EXIT_USAGE);
            };
            let params = EmbedParams {
                priority: Some(priority),
                dimensions,
                normalize,
                truncate: Some(!no_truncate),
                prompt_name,
                prompt,
                model,
                cache: no_cache.then_some(false),
                ..EmbedParams::default()
            };
            embed(socket, texts, params, batch.max(1)).await
        }
        Command::Rerank(rerank_args) => rerank(socket, rerank_args).await,
        Command::Bench(bench_args) => bench::run(socket, bench_args).await,
        Command::Metrics { openmetrics } => metrics(socket, openmetrics).await,
    };
    result.unwrap_or_else(|err| fail(socket, &err))
}

/// Prints a client error and picks the exit code: 2 when the daemon cannot be reached, else 1.
fn fail(socket: &Path, err: &ClientError) -> ExitCode {
    match err {
        ClientError::Connect { source, .. } => {
            eprintln!("akictl: cannot reach akidbd at {}: {source}", socket.display());
            let hint = match source.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    "your user may not open the socket: join the daemon's group (SocketGroup) or use sudo"
                }
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    "is akidbd running? check `systemctl status akidbd` / `journalctl -u akidbd`, or pass --socket PATH"
                }
                _ => "check the socket path (--socket) and the daemon's logs",
            };
            eprintln!("akictl: {hint}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
        ClientError::Io(_) | ClientError::Closed | ClientError::Frame(_) => {
            eprintln!("akictl: lost the connection to akidbd at {}: {err}", socket.display());
            ExitCode::from(EXIT_UNREACHABLE)
        }
        other => {
            eprintln!("akictl: {other}");
            ExitCode::from(EXIT_NOT_READY)
        }
    }
}

fn ready_code(status: &str) -> ExitCode {
    if status == "ready" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_READY)
    }
}

async fn status(socket: &Path, json: bool, watch: Option<f64>) -> Result<ExitCode, ClientError> {
    let mut client = Client::connect(socket).await?;
    loop {
        let status = client.status().await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&status).expect("status serializes"));
        } else {
            if watch.is_some() {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", report::status_screen(&status, socket));
        }
        let _ = std::io::stdout().flush();
        match watch {
            Some(secs) if secs > 0.0 => tokio::time::sleep(Duration::from_secs_f64(secs)).await,
            _ => return Ok(ready_code(&status.status)),
        }
    }
}

async fn health(socket: &Path) -> Result<ExitCode, ClientError> {
    let mut client = Client::connect(socket).await?;
    Ok(ready_code(&client.health().await?))
}

async fn info(socket: &Path) -> Result<ExitCode, ClientError> {
    let mut client = Client::connect(socket).await?;
    let info = client.info().await?;
    println!("{}", serde_json::to_string_pretty(&info).expect("info serializes"));
    Ok(ExitCode::SUCCESS)
}

async fn embed(socket: &Path, texts: Vec<String>, params: EmbedParams, batch: usize) -> Result<ExitCode, ClientError> {
    let mut client = Client::connect(socket).await?;
    let mut out = std::io::stdout().lock();
    let mut emit = |texts: &[String], vectors: Vec<Vec<f32>>| {
        for (text, vector) in texts.iter().zip(vectors) {
            let line = serde_json::json!({ "text": text, "embedding": vector });
            let _ = writeln!(out, "{line}");
        }
    };
    if !texts.is_empty() {
        let done = client.embed(&texts, &params).await?;
        emit(&texts, done.embeddings);
        return Ok(ExitCode::SUCCESS);
    }
    let lines: Vec<String> = std::io::stdin().lock().lines().map_while(Result::ok).collect();
    for chunk in lines.chunks(batch) {
        let done = client.embed(chunk, &params).await?;
        emit(chunk, done.embeddings);
    }
    Ok(ExitCode::SUCCESS)
}

/// `akictl rerank`'s arguments.
#[derive(Debug, clap::Args)]
struct RerankArgs {
    /// The query.
    query: String,
    /// The candidate documents; none: read stdin, one per line.
    documents: Vec<String>,
    /// Only the N best.
    #[arg(long)]
    top_n: Option<u64>,
    /// Print the logits instead of the model's activation of them.
    #[arg(long)]
    raw_scores: bool,
    /// Fail on over-long pairs instead of truncating.
    #[arg(long)]
    no_truncate: bool,
    /// realtime | normal | bulk.
    #[arg(long, default_value = "normal")]
    priority: String,
    /// The reranker, by name (default: the daemon's first reranker).
    #[arg(long)]
    model: Option<String>,
}

async fn rerank(socket: &Path, args: RerankArgs) -> Result<ExitCode, ClientError> {
    let Some(priority) = Priority::parse(&args.priority) else {
        eprintln!("akictl: --priority must be realtime, normal or bulk");
        return Ok(ExitCode::from(EXIT_USAGE));
    };
    let params = RerankParams {
        top_n: args.top_n,
        raw_scores: args.raw_scores.then_some(true),
        truncate: Some(!args.no_truncate),
        priority: Some(priority),
        model: args.model,
        ..RerankParams::default()
    };
    let documents = if args.documents.is_empty() {
        std::io::stdin().lock().lines().map_while(Result::ok).collect()
    } else {
        args.documents
    };
    let mut client = Client::connect(socket).await?;
    let reply = client.rerank(&args.query, &documents, &params).await?;
    let mut out = std::io::stdout().lock();
    for result in reply.results {
        let document = &documents[result.index as usize];
        // The score through f64's shortest text of the f32 value, not of its widened f64.
        let score: f64 = result.score.to_string().parse().unwrap_or(f64::NAN);
        let line = serde_json::json!({ "index": result.index, "score": score, "document": document });
        let _ = writeln!(out, "{line}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn metrics(socket: &Path, openmetrics: bool) -> Result<ExitCode, ClientError> {
    use akidb::metrics::{prometheus_text, Format};
    let mut client = Client::connect(socket).await?;
    let status = client.status().await?;
    let format = if openmetrics { Format::OpenMetrics } else { Format::Classic };
    print!("{}", prometheus_text(&status, format));
    Ok(ExitCode::SUCCESS)
}
