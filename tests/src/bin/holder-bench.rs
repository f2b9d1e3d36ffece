//! Holder benchmark: one `lablink-holder` process, N simulated VMs waiting on it from
//! this process (raw HTTP/1.1 over loopback), then assignments committed one after
//! another; prints the holder's RSS, memory per waiter and the latency from each
//! assignment's commit to its VM having the whole response.
//!
//! With `--both`, every VM holds both long-polls as a daemon does (`/vm_startup` and
//! `/vm_export`, two connections); after the assignments, ONE export opens for all N
//! VMs, each VM's export answer is timed from the commit, and the statements the holder
//! sent meanwhile are counted (`/healthz` `queries`, heartbeats included).
//!
//! Run with `scripts/bench-holder` (builds both binaries in release first).
//! Usage: holder-bench [--waiters 1000,5000,10000] [--assignments 1000] [--both]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lablink_core::domain::{CrdCommand, Email, JobId, Pin, VmStatus};
use lablink_db::{exports, vms};
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

/// One waiting poll of a VM (`path`: `/vm_startup` or `/vm_export`): connect, send the
/// poll, read the whole response.
async fn wait_once(
    addr: std::net::SocketAddr,
    path: &'static str,
    host: String,
    token: String,
    connected: Arc<Semaphore>,
    done: mpsc::UnboundedSender<(String, Instant, u16, Vec<u8>)>,
) {
    let permit = connected.acquire_owned().await;
    let mut sock = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("connect failed: {e}");
            let _ = done.send((host, Instant::now(), 0, Vec::new()));
            return;
        }
    };
    let body = format!(r#"{{"hostname":"{host}"}}"#);
    let req = format!(
        "POST {path}?wait=3600 HTTP/1.1\r\nHost: holder\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if sock.write_all(req.as_bytes()).await.is_err() {
        let _ = done.send((host, Instant::now(), 0, Vec::new()));
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
    let _ = done.send((host, at, status, buf));
}

/// A presigned `PUT` URL of a realistic length (about 1.2 KB: a task role's session token
/// is most of it), different for each VM.
fn upload_url(job: &str, host: &str, i: usize) -> String {
    let token: String = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD"
        .chars()
        .cycle()
        .take(900)
        .collect();
    format!(
        "https://lablink-exports-123456789012.s3.us-east-1.amazonaws.com/exports/{job}/vms/{host}.tar\
         ?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIAEXAMPLE0000000000%2F20261201%2Fus-east-1%2Fs3%2Faws4_request\
         &X-Amz-Date=20261201T090000Z&X-Amz-Expires=4200&X-Amz-Security-Token={token}\
         &X-Amz-SignedHeaders=host&X-Amz-Signature={:064x}",
        (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    )
}

/// The holder's `/healthz` as numbers: (listening, waiters, export waiters, queries).
async fn health(holder: &HolderProc, http: &reqwest::Client) -> anyhow::Result<(bool, u64, u64, u64)> {
    let h = holder.health(http).await?;
    let num = |k: &str| h[k].as_u64().with_context(|| format!("no {k} in /healthz: {h}"));
    Ok((
        h["listener"] == "listening",
        num("waiters")?,
        num("export_waiters")?,
        num("queries")?,
    ))
}

async fn run(n: usize, assignments: usize, both: bool) -> anyhow::Result<()> {
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
    let (export_tx, mut export_rx) = mpsc::unbounded_channel();
    for vm in &vms_ {
        tokio::spawn(wait_once(
            holder.addr,
            "/vm_startup",
            vm.hostname.to_string(),
            vm.secret.expose().to_owned(),
            Arc::clone(&connecting),
            tx.clone(),
        ));
        if both {
            tokio::spawn(wait_once(
                holder.addr,
                "/vm_export",
                vm.hostname.to_string(),
                vm.secret.expose().to_owned(),
                Arc::clone(&connecting),
                export_tx.clone(),
            ));
        }
    }
    drop(tx);
    drop(export_tx);
    if both {
        let until = Instant::now() + Duration::from_secs(240);
        loop {
            match health(&holder, &http).await {
                Ok((true, w, e, _)) if w == n as u64 && e == n as u64 => break,
                Ok(h) if Instant::now() > until => bail!("not all {n} VMs wait on both polls: {h:?}"),
                Err(e) if Instant::now() > until => return Err(e),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    } else {
        holder
            .wait_for_waiters(&http, n as u64, Duration::from_secs(120))
            .await?;
    }
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
        let (host, at, status, _) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
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

    // One export for every VM: each export waiter's answer, timed from the commit.
    let mut export = None;
    if both {
        let (_, _, _, q0) = health(&holder, &http).await?;
        let job = JobId::parse("20261201T090000Z-0b0e0c0d").map_err(anyhow::Error::msg)?;
        let targets: Vec<_> = vms_
            .iter()
            .enumerate()
            .map(|(i, vm)| {
                let target = exports::Target {
                    hostname: vm.hostname.clone(),
                    email: None,
                };
                (target, upload_url(job.as_str(), vm.hostname.as_str(), i))
            })
            .collect();
        let spec = exports::ExportSpec {
            extensions: vec!["slp".into()],
            max_file_bytes: 1 << 30,
            deadline: chrono::Utc::now() + chrono::Duration::hours(1),
        };
        exports::start(&client, &job, &spec, &targets).await?;
        let opened = Instant::now();
        let mut elat = Vec::with_capacity(n);
        while elat.len() < n {
            let (host, at, status, body) = tokio::time::timeout(Duration::from_secs(60), export_rx.recv())
                .await
                .context("an export task was not handed over within 60 s")?
                .context("all export waiters ended")?;
            if status != 200 {
                bail!("{host}'s export poll answered {status}");
            }
            let own = format!("/vms/{host}.tar?");
            if memchr::memmem::find(&body, own.as_bytes()).is_none() {
                bail!("{host} was not handed its own upload URL");
            }
            elat.push(at.saturating_duration_since(opened));
        }
        elat.sort();
        let (_, _, _, q1) = health(&holder, &http).await?;
        export = Some((elat, q1 - q0, rss_kib(pid)?));
    }

    // Shutdown answers the remaining waiters.
    let t_stop = Instant::now();
    holder.proc.terminate(Duration::from_secs(30)).await;
    let mut answered = 0;
    while let Ok(Some((_, _, status, _))) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        if status == 204 {
            answered += 1;
        }
    }
    let stop_time = t_stop.elapsed();

    let per_waiter = (rss_n.saturating_sub(rss0)) as f64 * 1024.0 / n as f64;
    if let Some((elat, queries, rss_export)) = export {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {n:>6} | {:>7.1} s | {:>6.1} MiB | {:>6.1} MiB | {:>7.0} B | {:>5} | {:>6.2} ms | {:>6.2} ms | {:>6.2} ms | {:>7.1} ms | {:>7.1} ms | {:>7.1} ms | {queries:>3} | {:>6.1} MiB | {:>5}/{:<5} in {:.2} s |",
            connect_time.as_secs_f64(),
            rss0 as f64 / 1024.0,
            rss_n as f64 / 1024.0,
            per_waiter,
            k,
            ms(percentile(&lat, 0.50)),
            ms(percentile(&lat, 0.99)),
            ms(lat.last().copied().unwrap_or_default()),
            ms(percentile(&elat, 0.50)),
            ms(percentile(&elat, 0.99)),
            ms(elat.last().copied().unwrap_or_default()),
            rss_export as f64 / 1024.0,
            answered,
            n - k,
            stop_time.as_secs_f64(),
        );
        return Ok(());
    }
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
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut waiters = vec![1000usize, 5000, 10000];
    let mut assignments = 1000usize;
    let mut both = false;
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
            "--both" => both = true,
            other => bail!(
                "unknown argument {other}; usage: holder-bench [--waiters 1000,5000,10000] [--assignments 1000] [--both]"
            ),
        }
    }
    // One socket per poll on each side (this process and the holder, which inherits the
    // limit): with both polls, two per VM. Root may raise the hard limit.
    let need = (waiters.iter().max().copied().unwrap_or(0) * if both { 2 } else { 1 } + 100) as u64;
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    if hard < need {
        let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, need, need);
    }
    let limit = rlimit::increase_nofile_limit(u64::MAX)?;
    if limit < need {
        bail!("the open-file limit is {limit}: too low for that many waiters (need {need})");
    }
    if both {
        println!(
            "| VMs, both polls | connect | holder RSS idle | RSS with both polls | per VM | assignments | p50 | p99 | max | export to all: p50 | p99 | max | holder queries meanwhile | RSS after the export | shutdown answered |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    } else {
        println!(
            "| waiters | connect | holder RSS idle | RSS with waiters | per waiter | assignments | p50 | p99 | max | shutdown answered |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
    }
    for n in waiters {
        run(n, assignments, both).await?;
    }
    Ok(())
}
