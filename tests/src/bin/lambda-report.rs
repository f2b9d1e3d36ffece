//! For every function (each route's and the log processor's): the size of its
//! `cargo lambda build --release` artifact (binary and zip), the AWS service clients it
//! links, and its start-up time, measured as Lambda sees a cold start: from spawning
//! the process to its first response posted to the Runtime API, with that first request
//! really served (its `events/` fixture, against a real Postgres, with the fixture admin
//! and a jobs table on moto_server, so the first database connection is included).
//! Median of 5 runs.
//!
//! Run with `scripts/lambda-report` (builds the artifacts first and writes the table
//! into docs/performance.md).

use std::time::Duration;

use anyhow::{Context, bail};
use lablink_e2e::runtime_api::{FixtureWorld, invoke_once};
use lablink_e2e::{aws_clients_linked, lambda_artifact, repo_root};
use lablink_web::routes;

const RUNS: usize = 5;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let world = FixtureWorld::new().await;
    println!(
        "| function | binary | zip | AWS clients linked | start → first response (median of {RUNS}) | min | max |"
    );
    println!("|---|---:|---:|---|---:|---:|---:|");
    let mut functions: Vec<(&str, std::path::PathBuf)> = routes::ALL
        .iter()
        .map(|r| {
            (
                r.function,
                repo_root().join("events").join(r.function).join("valid.json"),
            )
        })
        .collect();
    functions.push((
        "log-processor",
        repo_root().join("events/log-processor/batch.json"),
    ));
    for (f, event_path) in functions {
        let env = if f == "log-processor" {
            vec![("DATABASE_URL".to_owned(), world.db.url.clone())]
        } else {
            world.route_env("report", f).await
        };
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let bin = lambda_artifact(f)?;
        let zip = bin.with_file_name("bootstrap.zip");
        let size = std::fs::metadata(&bin)
            .with_context(|| format!("{} (run scripts/build-lambdas)", bin.display()))?
            .len();
        let zip_size = std::fs::metadata(&zip).map(|m| m.len()).unwrap_or(0);
        let clients = aws_clients_linked(&bin)?;
        let clients = if clients.is_empty() {
            "none".to_owned()
        } else {
            clients.join(", ")
        };
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
            "| {f} | {:.2} MiB | {:.2} MiB | {clients} | {:.1} ms | {:.1} ms | {:.1} ms |",
            size as f64 / 1048576.0,
            zip_size as f64 / 1048576.0,
            ms(times[RUNS / 2]),
            ms(times[0]),
            ms(times[RUNS - 1]),
        );
    }
    Ok(())
}
