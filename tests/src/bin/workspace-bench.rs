//! Workspace benchmark: N client-daemon processes, each preparing its own workspace
//! container from the stand-in client image (present on this machine) with a tutorial
//! repository (local `git daemon`) and a startup script, against Postgres, the routes
//! and the holder. Prints each VM's launch → `running` and its phases (image, container
//! start, clone, script) as the VM reported them, then one participant request per VM,
//! one at a time, timed from the request to start-host's record appearing inside the
//! workspace (read from the container's filesystem on the host, polled every 1 ms) and to
//! the desktop host running (the CRD 148 stand-in records its start), then `--rounds - 1`
//! fresh codes per seat from the seat page, timed the same way; and
//! `docker exec <container> true` alone for comparison. With `--seatings K`, every seat
//! is released K − 1 times (its workspace reset, as between two classes) and taken again
//! by a new participant, so first codes are measured K times per VM.
//!
//! Run with `scripts/bench-workspace` (as root: it reads containers' filesystems).
//! Usage: workspace-bench [--vms 10] [--rounds 10] [--seatings 1]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lablink_core::domain::VmStatus;
use lablink_db::vms;
use lablink_e2e::{ApiServer, HolderProc, Proc, create_vms, docker, workspace_bin};
use lablink_testkit::TestDb;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "min {:.1} / median {:.1} / p99 {:.1} / max {:.1} ms (n = {})",
        v[0],
        at(0.5),
        at(0.99),
        v[v.len() - 1],
        v.len()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut n = 10usize;
    let mut rounds = 10usize;
    let mut seatings = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--vms" => n = args.next().context("--vms N")?.parse()?,
            "--rounds" => rounds = args.next().context("--rounds R")?.parse()?,
            "--seatings" => seatings = args.next().context("--seatings K")?.parse()?,
            other => bail!(
                "unknown argument {other}; usage: workspace-bench [--vms 10] [--rounds 10] [--seatings 1]"
            ),
        }
    }
    anyhow::ensure!(
        n > 0 && (1..=10).contains(&rounds) && seatings > 0,
        "--vms at least 1, --rounds 1 to 10 (a seat takes 10 fresh codes), --seatings at least 1"
    );
    let image = lablink_e2e::test_client_image();
    let db = TestDb::new().await;
    let client = db.client().await;
    let prefix = format!("wsbench{:04x}", rand::random::<u16>());
    let vms_ = create_vms(&client, &prefix, n, VmStatus::Initializing).await?;
    let hosts: Vec<String> = vms_.iter().map(|v| v.hostname.as_str().to_owned()).collect();
    let dir = tempfile::tempdir()?;
    let (_git, repo) = lablink_e2e::git_daemon(dir.path()).await;
    let script = dir.path().join("startup.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"prepared for $LABLINK_DESKTOP_USER\" > /var/tmp/startup-ran\n",
    )?;
    let api = ApiServer::start(&db.config).await?;
    let holder = HolderProc::start(&db.url, "127.0.0.1:0".parse()?, &[]).await?;
    let bin = workspace_bin("lablink-client-daemon")?;

    let launched = Instant::now();
    let mut daemons: Vec<Proc> = Vec::new();
    for vm in &vms_ {
        let host = vm.hostname.as_str();
        let child = tokio::process::Command::new(&bin)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("LABLINK_API_URL", api.url())
            .env("LABLINK_HOLDER_URL", holder.url())
            .env("LABLINK_HOSTNAME", host)
            .env("LABLINK_CREDENTIAL", vm.secret.expose())
            .env("LABLINK_STATE_DIR", dir.path().join(format!("{host}.state")))
            .env("LABLINK_CLIENT_IMAGE", &image)
            .env("LABLINK_TUTORIAL_REPO", &repo)
            .env("LABLINK_STARTUP_SCRIPT", &script)
            .env("LABLINK_NVIDIA_SMI", "/nonexistent/nvidia-smi")
            .env("LABLINK_CLOUD_INIT_STATUS", dir.path().join("none.json"))
            .env("LABLINK_LOG_SINK", "none")
            .env("LABLINK_SHIP_LOGS", "")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(format!("{host}.log")))?)
            .kill_on_drop(true)
            .spawn()?;
        daemons.push(Proc { child });
    }
    // launch → running per VM, polled every 20 ms.
    let mut running_at = vec![None; n];
    let deadline = Instant::now() + Duration::from_secs(120 + 10 * n as u64);
    while running_at.iter().any(Option::is_none) {
        if Instant::now() > deadline {
            bail!("not every VM reported running within the deadline");
        }
        for (i, vm) in vms_.iter().enumerate() {
            if running_at[i].is_none()
                && vms::get_vm(&client, &vm.hostname)
                    .await?
                    .is_some_and(|v| v.status == VmStatus::Running && v.startup_script.is_some())
            {
                running_at[i] = Some(launched.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("{n} VMs launched at once, image present on this machine (2 cores):");
    println!("host                      launch→running   image    container  clone    script   (s)");
    for (i, vm) in vms_.iter().enumerate() {
        let v = vms::get_vm(&client, &vm.hostname).await?.context("vm row")?;
        let s = |p: Option<lablink_core::domain::Phase>| {
            p.map_or("-".to_owned(), |p| format!("{:.3}", p.seconds()))
        };
        println!(
            "{:<25} {:>14.3}   {:<8} {:<10} {:<8} {}",
            vm.hostname.as_str(),
            running_at[i].unwrap_or_default().as_secs_f64(),
            s(v.image_pull),
            s(v.container),
            s(v.tutorial_clone),
            s(v.startup_script),
        );
    }

    // `docker exec` alone: the floor of anything run in a workspace.
    let ctr = format!("lablink-workspace-{}", hosts[0]);
    let mut exec = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        docker(&["exec", &ctr, "true"]);
        exec.push(ms(t.elapsed()));
    }
    println!("docker exec <workspace> true:            {}", summary(exec));

    // Round 1: one participant request at a time, each to the next free VM. Rounds 2..R:
    // a fresh code for every seat from its page (the host is stopped, start-host
    // registers again, the host starts again). Each timed from the request to
    // start-host's record of that code inside the workspace, and to the desktop host's
    // start from the registration of that code (the CRD 148 stand-in records it).
    let http = reqwest::Client::new();
    let (mut first, mut first_running) = (Vec::new(), Vec::new());
    let (mut fresh, mut fresh_running) = (Vec::new(), Vec::new());
    let mut seats: Vec<(String, String)> = Vec::new();
    for seating in 0..seatings {
        if seating > 0 {
            // Every seat released (its workspace reset) and back in the pool.
            for h in &hosts {
                let host = lablink_core::domain::Hostname::parse(h)?;
                lablink_db::seats::release(&client, &host, false, "bench").await?;
            }
            seats.clear();
            let back = Instant::now();
            loop {
                let mut free = 0;
                for vm in &vms_ {
                    if vms::get_vm(&client, &vm.hostname)
                        .await?
                        .is_some_and(|v| v.status == VmStatus::Running && v.user_email.is_none())
                    {
                        free += 1;
                    }
                }
                if free == n {
                    break;
                }
                if back.elapsed() > Duration::from_secs(120) {
                    bail!("only {free} of {n} released VMs were back in the pool within 120 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let rounds_now = if seating + 1 == seatings { rounds } else { 1 };
        for round in 0..rounds_now {
            if round > 0 {
                // Past the seat's 20 s between codes, as a participant would be.
                client
                    .execute(
                        "UPDATE vms SET code_changed_at = now() - interval '1 minute'",
                        &[],
                    )
                    .await?;
            }
            for i in 0..n {
                let code = format!("4/0AVMBsJh1-benchParticipantCode{seating:02}r{round:02}x{i:04}");
                let command = format!(
                    "DISPLAY= /opt/google/chrome-remote-desktop/start-host --code=\"{code}\" \
                 --redirect-url=\"https://remotedesktop.google.com/_/oauthredirect\" --name=$(hostname)"
                );
                let t;
                let host = if round == 0 {
                    holder
                        .wait_for_waiters(&http, n as u64, Duration::from_secs(30))
                        .await?;
                    t = Instant::now();
                    let page = http
                        .post(format!("{}/api/request_vm", api.url()))
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(serde_urlencoded::to_string([
                            ("email", format!("p{seating}-{i}@example.edu")),
                            ("crd_command", command),
                        ])?)
                        .send()
                        .await?
                        .text()
                        .await?;
                    let host = hosts
                        .iter()
                        .find(|h| page.contains(&format!(">{h}<")))
                        .context("the success page names a VM")?
                        .clone();
                    let at = page.find("href=\"/seat/").context("a seat link")? + "href=\"/seat/".len();
                    let token = page[at..].split('"').next().unwrap_or_default().to_owned();
                    seats.push((host.clone(), token));
                    host
                } else {
                    let (host, token) = seats[i].clone();
                    t = Instant::now();
                    let r = http
                        .post(format!("{}/api/seat/{token}/code", api.url()))
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(serde_urlencoded::to_string([("crd_command", command)])?)
                        .send()
                        .await?;
                    anyhow::ensure!(
                        r.status().is_success(),
                        "a fresh code was refused: {}",
                        r.status()
                    );
                    host
                };
                let merged = PathBuf::from(docker(&[
                    "inspect",
                    "--format",
                    "{{.GraphDriver.Data.MergedDir}}",
                    &format!("lablink-workspace-{host}"),
                ]));
                let record = merged.join("tmp/start-host-runs.log");
                loop {
                    if has_code(&record, &code) {
                        if round == 0 { &mut first } else { &mut fresh }.push(ms(t.elapsed()));
                        break;
                    }
                    if t.elapsed() > Duration::from_secs(30) {
                        bail!("start-host did not run on {host} within 30 s");
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let hosts_log = merged.join("tmp/crd-host-starts.log");
                let token = {
                    use sha2::Digest;
                    hex::encode(sha2::Sha256::digest(code.as_bytes()))[..16].to_owned()
                };
                loop {
                    if has_code(&hosts_log, &token) {
                        if round == 0 {
                            &mut first_running
                        } else {
                            &mut fresh_running
                        }
                        .push(ms(t.elapsed()));
                        break;
                    }
                    if t.elapsed() > Duration::from_secs(60) {
                        bail!("the desktop host did not start on {host} within 60 s");
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    println!(
        "request → start-host ran in the workspace (first code): {}",
        summary(first.clone())
    );
    println!(
        "request → desktop host running (first code): {}",
        summary(first_running)
    );
    if !fresh.is_empty() {
        println!(
            "fresh code → start-host ran (host stopped first): {}",
            summary(fresh.clone())
        );
        println!(
            "fresh code → desktop host running again: {}",
            summary(fresh_running)
        );
        let mut all = first;
        all.extend(fresh);
        println!("every request → start-host ran: {}", summary(all));
    }
    println!("(command: scripts/bench-workspace --vms {n} --rounds {rounds} --seatings {seatings})");

    drop(daemons);
    for h in &hosts {
        let _ = std::process::Command::new("docker")
            .args(["rm", "--force", &format!("lablink-workspace-{h}")])
            .output();
        let _ = std::process::Command::new("docker")
            .args(["volume", "rm", "--force", &format!("lablink-home-{h}")])
            .output();
    }
    Ok(())
}

fn has_code(record: &Path, code: &str) -> bool {
    std::fs::read_to_string(record).is_ok_and(|t| t.contains(code))
}
