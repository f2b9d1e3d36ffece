//! For every route's Lambda: the size of the `cargo lambda build --release` artifact
//! (binary and zip) and its start-up time, measured as Lambda sees a cold start: from
//! spawning the process to its first response posted to the Runtime API, with that
//! first request really served (its `events/` fixture, against a real Postgres, so the
//! first database connection is included). Median of 5 runs.
//!
//! Run with `scripts/lambda-report` (builds the artifacts first and writes the table
//! into docs/performance.md).

use std::time::Duration;

use anyhow::{Context, bail};
use lablink_core::credential::Secret;
use lablink_core::db::vms;
use lablink_core::domain::{Hostname, VmStatus};
use lablink_e2e::runtime_api::invoke_once;
use lablink_e2e::{lambda_artifact, repo_root};
use lablink_testkit::TestDb;
use lablink_web::Route;

const RUNS: usize = 5;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let client = db.client().await;
    vms::create_vms(
        &client,
        &[vms::NewVm {
            hostname: Hostname::parse("lablink-vm-test-1")?,
            instance_id: None,
            credential_hash: Some(
                Secret::presented("fixture-credential-of-lablink-vm-test-1-not-a-secret").hash(),
            ),
            status: VmStatus::Running,
            provision: None,
        }],
    )
    .await?;
    let key = "ab".repeat(32);
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("LABLINK_SESSION_KEY", key.as_str()),
    ];
    println!("| function | binary | zip | start → first response (median of {RUNS}) | min | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut functions: Vec<(&str, std::path::PathBuf)> = Route::ALL
        .iter()
        .map(|r| {
            (
                r.function_name(),
                repo_root()
                    .join("events")
                    .join(r.function_name())
                    .join("valid.json"),
            )
        })
        .collect();
    functions.push((
        "log-processor",
        repo_root().join("events/log-processor/batch.json"),
    ));
    for (f, event_path) in functions {
        let bin = lambda_artifact(f)?;
        let zip = bin.with_file_name("bootstrap.zip");
        let size = std::fs::metadata(&bin)
            .with_context(|| format!("{} (run scripts/build-lambdas)", bin.display()))?
            .len();
        let zip_size = std::fs::metadata(&zip).map(|m| m.len()).unwrap_or(0);
        let event = std::fs::read_to_string(&event_path)?;
        let mut times = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let got = invoke_once(&bin, f, event.clone(), &env).await?;
            if !got.kind.starts_with("response:") {
                bail!("{f} failed: {}", got.body);
            }
            times.push(got.elapsed);
        }
        times.sort();
        println!(
            "| {f} | {:.2} MiB | {:.2} MiB | {:.1} ms | {:.1} ms | {:.1} ms |",
            size as f64 / 1048576.0,
            zip_size as f64 / 1048576.0,
            ms(times[RUNS / 2]),
            ms(times[0]),
            ms(times[RUNS - 1]),
        );
    }
    Ok(())
}
