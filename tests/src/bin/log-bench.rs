//! Log-append benchmark: 1,000 CloudWatch-shaped batches (100 lines each, realistic
//! cloud-init lines) for ONE VM through the log processor's code path
//! (`log_processor::ingest`: decode, then one-statement append), timing the first 100 batches
//! against the last 100. Classic rewrote the VM's whole log on every batch, so its cost
//! grew with the log; here it must stay flat.
//!
//! Run with `scripts/bench-logs`. Usage: log-bench [--batches 1000] [--lines 100]

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use lablink_core::domain::{Hostname, VmStatus};
use lablink_db::vms;
use lablink_testkit::TestDb;

fn batch(n: usize, lines: usize) -> Vec<u8> {
    let events: Vec<serde_json::Value> = (0..lines)
        .map(|i| {
            serde_json::json!({
                "id": format!("{:056}", n * lines + i),
                "timestamp": 1_795_428_000_000i64 + (n * lines + i) as i64,
                "message": format!("[{n:04}.{i:03}] Get:{i} http://archive.ubuntu.com/ubuntu noble/main amd64 libcudnn9 9.1.{i} [{} kB]", 100 + i),
            })
        })
        .collect();
    let data = serde_json::json!({
        "messageType": "DATA_MESSAGE", "owner": "123456789012",
        "logGroup": "lablink-cloud-init-bench", "logStream": "bench-vm-1",
        "subscriptionFilters": ["bench"], "logEvents": events,
    });
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&serde_json::to_vec(&data).expect("json"))
        .expect("gzip");
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz.finish().expect("gzip"));
    serde_json::to_vec(&serde_json::json!({ "awslogs": { "data": b64 } })).expect("json")
}

fn mean_ms(d: &[Duration]) -> f64 {
    d.iter().map(Duration::as_secs_f64).sum::<f64>() / d.len() as f64 * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (mut batches, mut lines) = (1000usize, 100usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--batches" => batches = args.next().context("--batches N")?.parse()?,
            "--lines" => lines = args.next().context("--lines N")?.parse()?,
            other => bail!("unknown argument {other}; usage: log-bench [--batches 1000] [--lines 100]"),
        }
    }
    if batches < 200 {
        bail!("--batches must be at least 200 (first 100 vs last 100)");
    }
    let db = TestDb::new().await;
    let client = db.client().await;
    vms::create_vms(
        &client,
        &[vms::NewVm {
            hostname: Hostname::parse("bench-vm-1")?,
            instance_id: None,
            credential_hash: None,
            status: VmStatus::Running,
            provision: None,
        }],
    )
    .await?;
    // Encode up front: the timing is the processor's work, not the generator's.
    let events: Vec<Vec<u8>> = (0..batches).map(|n| batch(n, lines)).collect();
    let mut times = Vec::with_capacity(batches);
    for e in &events {
        let t = Instant::now();
        let o = log_processor::ingest(&client, e).await?;
        times.push(t.elapsed());
        if o.stored as usize != lines {
            bail!("stored {} of {lines}: {o:?}", o.stored);
        }
    }
    let stored: i64 = client
        .query_one("SELECT count(*) FROM vm_log_lines", &[])
        .await?
        .get(0);
    let first = mean_ms(&times[..100]);
    let last = mean_ms(&times[batches - 100..]);
    println!(
        "| batches | lines per batch | lines stored at the end | first 100 batches, mean | last 100 batches, mean | last / first |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {batches} | {lines} | {stored} | {first:.2} ms | {last:.2} ms | {:.2} |",
        last / first
    );
    Ok(())
}
