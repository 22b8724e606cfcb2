//! `recd-loadgen`: reads lists over a Unix socket the way apps do, with a key choice
//! redis-benchmark cannot make: uniform (as its `-r`), Zipf-distributed (a few hot keys
//! take most reads, as real traffic does) or one key. `scripts/bench_serving.py` runs it
//! against recd and against redis-server with the same lists, so both face the same client.
//!
//! One thread (a current-thread tokio runtime) drives every connection, as redis-benchmark's
//! event loop does, so the client costs about what redis-benchmark costs and can be pinned
//! to one CPU. Each connection sends `--pipeline` requests, reads as many replies, and
//! records the time from its write to the last reply for each request of the batch (as
//! redis-benchmark counts). The output is redis-benchmark's `--csv` form: a header line,
//! then one line of req/s and latencies in milliseconds.

mod keys;
mod resp;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use keys::KeyChoice;

#[derive(Parser, Clone)]
#[command(about = "RESP read load over a Unix socket: uniform, Zipf or one-key key choice")]
struct Args {
    /// The server's Unix socket
    #[arg(long)]
    socket: PathBuf,
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Requests in flight per connection
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Requests in all
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// Keys are PREFIX followed by 0..KEYS as 12 zero-padded digits (redis-benchmark's
    /// rendering of `__rand_int__`)
    #[arg(long)]
    keys: u64,
    #[arg(long, default_value = "bench:")]
    prefix: String,
    /// `uniform`, `zipf:S` (rank r chosen with weight 1/r^S; key 0 is the hottest) or
    /// `one` (key 0 only)
    #[arg(long, default_value = "uniform")]
    dist: String,
    /// `zrevrange` (ZREVRANGE key 0 9 WITHSCORES) or `get` (GET key)
    #[arg(long, default_value = "zrevrange")]
    command: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> std::process::ExitCode {
    match measure(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("recd-loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the load and prints its one line of results.
fn measure(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients > 0 && args.pipeline > 0 && args.requests > 0, "clients, pipeline, requests: >= 1");
    let choice = KeyChoice::parse(&args.dist, args.keys)?;
    let command = resp::Command::parse(&args.command)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (elapsed, mut latencies) = runtime.block_on(run(&args, &choice, command))?;
    latencies.sort_unstable();
    let done = latencies.len() as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| ms(latencies[((done - 1.0) * q).round() as usize]);
    let mean = latencies.iter().map(|d| ms(*d)).sum::<f64>() / done;
    println!(
        "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\""
    );
    println!(
        "\"{} {}\",\"{:.2}\",\"{mean:.3}\",\"{:.3}\",\"{:.3}\",\"{:.3}\",\"{:.3}\",\"{:.3}\"",
        args.command,
        args.dist,
        done / elapsed.as_secs_f64(),
        at(0.0),
        at(0.5),
        at(0.95),
        at(0.99),
        at(1.0)
    );
    Ok(())
}

/// Every client's requests, concurrently; the wall time and each request's latency.
async fn run(args: &Args, choice: &KeyChoice, command: resp::Command) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let per_client = args.requests.div_ceil(args.clients as u64);
    let mut streams = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let s = tokio::net::UnixStream::connect(&args.socket)
            .await
            .with_context(|| format!("connecting to {}", args.socket.display()))?;
        streams.push(s);
    }
    let start = Instant::now();
    let local = tokio::task::LocalSet::new();
    let mut tasks = Vec::new();
    for (n, stream) in streams.into_iter().enumerate() {
        let mut keys = choice.sampler(args.seed.wrapping_add(n as u64));
        let (prefix, pipeline) = (args.prefix.clone(), args.pipeline);
        tasks.push(local.spawn_local(async move {
            client(stream, per_client, pipeline, || command.encode(&prefix, keys.next_key())).await
        }));
    }
    let mut latencies = Vec::with_capacity((per_client * args.clients as u64) as usize);
    local
        .run_until(async {
            for t in tasks {
                latencies.extend(t.await??);
            }
            anyhow::Ok(())
        })
        .await?;
    Ok((start.elapsed(), latencies))
}

/// One connection: `requests` requests in batches of `pipeline`, each batch written at once
/// and its replies read whole. An error reply fails the run.
async fn client(
    mut stream: tokio::net::UnixStream,
    requests: u64,
    pipeline: usize,
    mut next: impl FnMut() -> Vec<u8>,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(requests as usize);
    let mut input = resp::Input::default();
    let mut out = Vec::new();
    let mut left = requests;
    while left > 0 {
        let batch = left.min(pipeline as u64);
        out.clear();
        (0..batch).for_each(|_| out.extend(next()));
        let sent = Instant::now();
        stream.write_all(&out).await?;
        let mut replies = 0;
        while replies < batch {
            match input.next_reply()? {
                Some(()) => replies += 1,
                None => {
                    let n = stream.read(input.spare()).await?;
                    anyhow::ensure!(n > 0, "the server closed the connection");
                    input.filled(n);
                }
            }
        }
        latencies.extend(std::iter::repeat_n(sent.elapsed(), batch as usize));
        left -= batch;
    }
    Ok(latencies)
}
