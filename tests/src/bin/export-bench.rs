//! Data-export benchmark: 1 GB of result files spread over the VMs, each VM's archive made
//! by the daemon's own code, then assembled into one zip by the export's own code, in a
//! child process whose peak RSS (`VmHWM`) is what we report.
//!
//! `scripts/bench-export [--vms 20] [--mb 1024] [--files-per-vm 5] [--path-bytes 0] [--s3]`
//!
//! Many small files instead: `--vms 20 --files-per-vm 5000 --mb 20 --path-bytes 200` is
//! 100,000 files of about 200 bytes, each under a path of about 200 bytes: what grows then
//! is the per-file state (central directory, manifest rows), not the data.
//!
//! With `--s3` the archives go to a bucket on `moto_server` and the assembly runs the AWS
//! code path (streamed GETs, a multipart upload of 8 MiB parts): its memory is what a
//! Lambda would see; its throughput is moto's (a Python server), not S3's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use lablink_export::{ExportStorage, LocalStorage, S3Storage, VmPart};

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Incompressible bytes, fast (xorshift).
fn fill(path: &Path, bytes: u64, mut seed: u64) -> std::io::Result<()> {
    use std::io::Write;
    let size = bytes.clamp(8, 1 << 20) as usize;
    let mut f = std::io::BufWriter::with_capacity(size, std::fs::File::create(path)?);
    let mut buf = vec![0u8; size];
    let mut left = bytes;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()
}

const JOB: &str = "20261124T000000Z-be9cbe9c";

/// The folder (relative to a workspace) the files go in: empty, or nested folders of up
/// to 100 bytes, so that `<folder>/session<n>.slp` is about `path_bytes` long.
fn folder(path_bytes: u64) -> PathBuf {
    let mut left = path_bytes.saturating_sub("/session0000.slp".len() as u64) as usize;
    let mut p = PathBuf::new();
    let mut i = 0;
    while left > 20 {
        let len = left.min(100);
        let name = format!("results-{i:02}-");
        p.push(format!("{name}{}", "x".repeat(len - 1 - name.len())));
        left -= len;
        i += 1;
    }
    p
}

fn hosts(vms: u64) -> Vec<String> {
    (1..=vms).map(|i| format!("bench-vm-{i:03}")).collect()
}

/// The child: assemble the archives (under `dir`, or in bucket `s3:<name>` of the
/// environment's endpoint) and print figures.
async fn assemble(dir: String, vms: u64) -> anyhow::Result<()> {
    let storage: Arc<dyn ExportStorage> = match dir.strip_prefix("s3:") {
        Some(bucket) => {
            let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            Arc::new(S3Storage::new(&sdk, bucket))
        }
        None => Arc::new(LocalStorage {
            dir: PathBuf::from(dir),
            base_url: "http://127.0.0.1:9".into(),
            key: vec![1; 32],
        }),
    };
    let parts = hosts(vms)
        .into_iter()
        .map(|h| VmPart {
            hostname: h,
            email: Some("bench@uni.edu".into()),
            state: "done".into(),
            detail: None,
        })
        .collect();
    let started = Instant::now();
    let sum = lablink_export::assemble(
        storage,
        JOB.into(),
        "lablink_data_bench.zip".into(),
        parts,
        chrono::Utc::now(),
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "assembly: {} files, {:.1} MiB of files -> {:.1} MiB zip in {secs:.2} s = {:.0} MiB/s; peak RSS {:.1} MiB",
        sum.files,
        sum.bytes as f64 / 1048576.0,
        sum.zip_bytes as f64 / 1048576.0,
        sum.bytes as f64 / 1048576.0 / secs,
        peak_rss_kib() as f64 / 1024.0
    );
    Ok(())
}

/// The child: one VM's archive, as its daemon makes it.
fn collect(workspace: &Path, out: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let c = lablink_client_daemon::export::write_archive(workspace, &["slp".into()], u64::MAX, out)?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "daemon archive: {} files, {:.1} MiB in {secs:.2} s = {:.0} MiB/s; peak RSS {:.1} MiB",
        c.files,
        c.bytes as f64 / 1048576.0,
        c.bytes as f64 / 1048576.0 / secs,
        peak_rss_kib() as f64 / 1024.0
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("assemble") => return assemble(args[2].clone(), args[3].parse()?).await,
        Some("collect") => return collect(Path::new(&args[2]), Path::new(&args[3])),
        _ => {}
    }
    let vms = arg(&args, "--vms", 20);
    let mb = arg(&args, "--mb", 1024);
    let per_vm = arg(&args, "--files-per-vm", 5);
    let path_bytes = arg(&args, "--path-bytes", 0);
    let s3 = args.iter().any(|a| a == "--s3");
    let bucket = format!("lablink-export-bench-{:08x}", rand::random::<u32>());
    let sdk = lablink_testkit::moto::sdk_config();
    let s3_store = S3Storage::new(&sdk, &bucket);
    if s3 {
        s3_store.client.create_bucket().bucket(&bucket).send().await?;
    }
    let dir = tempfile::tempdir_in(std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into()))?;
    let exe = std::env::current_exe()?;
    let file_bytes = mb * 1024 * 1024 / (vms * per_vm);
    let sub = folder(path_bytes);
    let size = if file_bytes >= 1 << 20 {
        format!("{:.1} MiB", file_bytes as f64 / 1048576.0)
    } else {
        format!("{file_bytes} bytes")
    };
    println!(
        "export benchmark: {vms} VMs x {per_vm} files x {size} = {mb} MiB, paths of {} bytes",
        sub.join("session0.slp").as_os_str().len()
    );
    let storage = LocalStorage {
        dir: dir.path().to_path_buf(),
        base_url: String::new(),
        key: vec![],
    };
    for (i, host) in hosts(vms).iter().enumerate() {
        let ws = dir.path().join("ws").join(host);
        std::fs::create_dir_all(ws.join(&sub))?;
        for f in 0..per_vm {
            fill(
                &ws.join(&sub).join(format!("session{f}.slp")),
                file_bytes,
                (i as u64 + 1) * 7919 + f,
            )?;
        }
        let out = storage.archive_path(JOB, host);
        std::fs::create_dir_all(out.parent().unwrap())?;
        // The first VM's archive is made in a child, to report the daemon's memory too.
        if i == 0 {
            let status = std::process::Command::new(&exe)
                .arg("collect")
                .arg(&ws)
                .arg(&out)
                .status()?;
            anyhow::ensure!(status.success(), "collect failed");
        } else {
            lablink_client_daemon::export::write_archive(&ws, &["slp".into()], u64::MAX, &out)?;
        }
        std::fs::remove_dir_all(&ws)?;
        if s3 {
            s3_store
                .client
                .put_object()
                .bucket(&bucket)
                .key(lablink_export::storage::archive_key(JOB, host))
                .body(aws_sdk_s3::primitives::ByteStream::from_path(&out).await?)
                .send()
                .await?;
            std::fs::remove_file(&out)?;
        }
    }
    let mut child = std::process::Command::new(&exe);
    child.arg("assemble");
    if s3 {
        child.arg(format!("s3:{bucket}"));
        child.envs(lablink_testkit::moto::env());
    } else {
        child.arg(dir.path());
    }
    let status = child.arg(vms.to_string()).status().context("run the assembly")?;
    anyhow::ensure!(status.success(), "assembly failed");
    let mut zip = storage.zip_path(JOB, "lablink_data_bench.zip");
    if s3 {
        zip = dir.path().join("downloaded.zip");
        let got = s3_store
            .client
            .get_object()
            .bucket(&bucket)
            .key(lablink_export::storage::zip_key(JOB, "lablink_data_bench.zip"))
            .send()
            .await?;
        let mut reader = got.body.into_async_read();
        let mut file = tokio::fs::File::create(&zip).await?;
        tokio::io::copy(&mut reader, &mut file).await?;
    }
    let z = lablink_e2e::read_zip(&zip)?;
    anyhow::ensure!(z["bad"].is_null(), "the zip has a bad entry: {}", z["bad"]);
    let entries = z["names"].as_array().map_or(0, Vec::len) as u64;
    let rows = z["manifest"].as_str().map_or(0, |m| m.lines().count()) as u64;
    anyhow::ensure!(
        entries == vms * per_vm + 1 && rows == vms * per_vm + 1,
        "expected {} files: the zip has {entries} entries, manifest.csv {rows} lines",
        vms * per_vm
    );
    // The central directory: 46 bytes and the name a record (no ZIP64 extra here).
    let central: usize = z["names"]
        .as_array()
        .map_or(0, |n| n.iter().map(|n| 46 + n.as_str().map_or(0, str::len)).sum());
    let manifest = z["manifest"].as_str().map_or(0, str::len);
    println!(
        "zip checked by Python's zipfile: {entries} entries, every CRC good; manifest.csv lists every file\n\
         per-file records: central directory {:.1} MiB, manifest.csv {:.1} MiB",
        central as f64 / 1048576.0,
        manifest as f64 / 1048576.0
    );
    Ok(())
}
