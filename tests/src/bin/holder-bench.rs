//! Holder benchmark: one `lablink-holder` process, N simulated VMs waiting on it from
//! this process (raw HTTP/1.1 over loopback), then assignments committed one after
//! another; prints the holder's RSS, memory per waiter and the latency from each
//! assignment's commit to its VM having the whole response.
//!
//! Run with `scripts/bench-holder` (builds both binaries in release first).
//! Usage: holder-bench [--waiters 1000,5000,10000] [--assignments 1000]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lablink_core::domain::{CrdCommand, Email, Pin, VmStatus};
use lablink_db::vms;
use lablink_e2e::{HolderProc, create_vms, workspace_bin};
use lablink_testkit::TestDb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// One waiting VM: connect, send the poll, read the whole response.
async fn wait_once(
    addr: std::net::SocketAddr,
    host: String,
    token: String,
    connected: Arc<Semaphore>,
    done: mpsc::UnboundedSender<(String, Instant, u16)>,
) {
    let permit = connected.acquire_owned().await;
    let mut sock = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("connect failed: {e}");
            let _ = done.send((host, Instant::now(), 0));
            return;
        }
    };
    let body = format!(r#"{{"hostname":"{host}"}}"#);
    let req = format!(
        "POST /vm_startup?wait=3600 HTTP/1.1\r\nHost: holder\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if sock.write_all(req.as_bytes()).await.is_err() {
        let _ = done.send((host, Instant::now(), 0));
        return;
    }
    drop(permit);
    // The holder closes after the response (Connection: close): read to EOF.
    let mut buf = Vec::with_capacity(512);
    let _ = sock.read_to_end(&mut buf).await;
    let at = Instant::now();
    let status = std::str::from_utf8(&buf)
        .ok()
        .and_then(|s| s.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let _ = done.send((host, at, status));
}

async fn run(n: usize, assignments: usize) -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.client().await;
    let vms_ = create_vms(&client, "bench", n, VmStatus::Running).await?;
    let holder_bin = workspace_bin("lablink-holder")?;
    // Allocator tuning experiments pass through (e.g. MALLOC_ARENA_MAX=1).
    let malloc: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("MALLOC_"))
        .collect();
    let mut env: Vec<(&str, &str)> = vec![("LABLINK_HOLDER_MAX_WAIT_SECONDS", "3600")];
    env.extend(malloc.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut holder = HolderProc::start_bin(&holder_bin, &db.url, "127.0.0.1:0".parse()?, &env).await?;
    let http = reqwest::Client::new();
    holder.wait_for_waiters(&http, 0, Duration::from_secs(10)).await?;
    let pid = holder.proc.pid();
    let rss0 = rss_kib(pid)?;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let connecting = Arc::new(Semaphore::new(256));
    let t_connect = Instant::now();
    for vm in &vms_ {
        tokio::spawn(wait_once(
            holder.addr,
            vm.hostname.to_string(),
            vm.secret.expose().to_owned(),
            Arc::clone(&connecting),
            tx.clone(),
        ));
    }
    drop(tx);
    holder
        .wait_for_waiters(&http, n as u64, Duration::from_secs(120))
        .await?;
    let connect_time = t_connect.elapsed();
    // Let allocations settle before reading RSS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_n = rss_kib(pid)?;

    // Commit assignments one after another; note when each commit returned.
    let k = assignments.min(n);
    let mut committed: HashMap<String, Instant> = HashMap::with_capacity(k);
    for i in 0..k {
        let email = Email::parse(&format!("p{i}@bench.example"))?;
        let cmd = CrdCommand::from_code(&format!("4/0AbenchCode{i}"))?;
        let a = vms::assign(&client, &email, &cmd, &Pin::generate())
            .await?
            .context("a free VM")?;
        committed.insert(a.hostname.to_string(), Instant::now());
    }
    let mut lat = Vec::with_capacity(k);
    while lat.len() < k {
        let (host, at, status) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .context("an assignment was not delivered within 30 s")?
            .context("all waiters ended")?;
        let Some(c) = committed.get(&host) else {
            bail!("{host} answered {status} without an assignment");
        };
        if status != 200 {
            bail!("{host} answered {status}");
        }
        lat.push(at.saturating_duration_since(*c));
    }
    lat.sort();
    let rss_after = rss_kib(pid)?;

    // Shutdown answers the remaining waiters.
    let t_stop = Instant::now();
    holder.proc.terminate(Duration::from_secs(30)).await;
    let mut answered = 0;
    while let Ok(Some((_, _, status))) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        if status == 204 {
            answered += 1;
        }
    }
    let stop_time = t_stop.elapsed();

    let per_waiter = (rss_n.saturating_sub(rss0)) as f64 * 1024.0 / n as f64;
    println!(
        "| {n:>6} | {:>7.1} s | {:>6.1} MiB | {:>6.1} MiB | {:>7.0} B | {:>5} | {:>6.2} ms | {:>6.2} ms | {:>6.2} ms | {:>5}/{:<5} in {:.2} s |",
        connect_time.as_secs_f64(),
        rss0 as f64 / 1024.0,
        rss_n as f64 / 1024.0,
        per_waiter,
        k,
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        answered,
        n - k,
        stop_time.as_secs_f64(),
    );
    let _ = rss_after;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut waiters = vec![1000usize, 5000, 10000];
    let mut assignments = 1000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--waiters" => {
                waiters = args
                    .next()
                    .context("--waiters needs a list")?
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--assignments" => assignments = args.next().context("--assignments needs a number")?.parse()?,
            other => bail!(
                "unknown argument {other}; usage: holder-bench [--waiters 1000,5000,10000] [--assignments 1000]"
            ),
        }
    }
    let limit = rlimit::increase_nofile_limit(u64::MAX)?;
    if (limit as usize) < waiters.iter().max().copied().unwrap_or(0) + 100 {
        bail!("the open-file limit is {limit}: too low for that many waiters");
    }
    println!(
        "| waiters | connect | holder RSS idle | RSS with waiters | per waiter | assignments | p50 | p99 | max | shutdown answered |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for n in waiters {
        run(n, assignments).await?;
    }
    Ok(())
}
