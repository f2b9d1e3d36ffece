//! A throwaway Postgres cluster started from the system's binaries
//! (`/usr/lib/postgresql/<version>/bin`, or `initdb` on `PATH`), on a free loopback
//! port, with its data in a temporary directory. As root (Postgres refuses to run as
//! root) the server runs as the `postgres` user through `runuser`.
//!
//! A small watchdog process stops the server and deletes its directory as soon as the
//! process that started it is gone, so a crashed or killed test run leaves nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    as_postgres: bool,
}

/// The newest installed server's bin directory.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("LABLINK_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    candidates.sort();
    if let Some((_, bin)) = candidates.pop() {
        return Ok(bin);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        if Path::new(dir).join("initdb").exists() {
            return Ok(PathBuf::from(dir));
        }
    }
    bail!(
        "no PostgreSQL server binaries found (looked in /usr/lib/postgresql/*/bin and PATH); install postgresql or set DATABASE_URL"
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Cluster {
    /// Start a new cluster in a fresh temporary directory.
    pub fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "lablink-pg-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        Self::start_in(&dir, true)
    }

    /// Start a cluster in `dir`, creating it when empty. With `ephemeral`, a watchdog
    /// removes it when this process exits.
    pub fn start_in(dir: &Path, ephemeral: bool) -> anyhow::Result<Self> {
        let bin = find_bin_dir()?;
        let as_postgres = is_root();
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        if as_postgres {
            run(Command::new("chown").arg("-R").arg("postgres:postgres").arg(&dir))?;
            // Temp dirs of other users must still be reachable by postgres.
            if let Some(parent) = dir.parent() {
                let _ = Command::new("chmod").arg("o+x").arg(parent).status();
            }
        }
        let port = free_port()?;
        let cluster = Self {
            dir: dir.clone(),
            port,
            bin,
            as_postgres,
        };
        let data = dir.join("data");
        if !data.join("PG_VERSION").exists() {
            cluster.run_pg("initdb", |c| {
                c.arg("-D").arg(&data).args([
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--no-instructions",
                ])
            })?;
        }
        if ephemeral {
            cluster.spawn_watchdog()?;
        }
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync={} -c synchronous_commit=off -c full_page_writes=off -c max_connections=400",
            dir.display(),
            if ephemeral { "off" } else { "on" }
        );
        cluster
            .run_pg("pg_ctl", |c| {
                c.arg("-D")
                    .arg(&data)
                    .arg("-l")
                    .arg(dir.join("server.log"))
                    .args(["-w", "-t", "60", "-o"])
                    .arg(&opts)
                    .arg("start")
            })
            .with_context(|| format!("start postgres (log: {})", dir.join("server.log").display()))?;
        Ok(cluster)
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run_pg(&self, program: &str, args: impl FnOnce(&mut Command) -> &mut Command) -> anyhow::Result<()> {
        let mut c = self.command(program);
        args(&mut c);
        run(&mut c)
    }

    /// Stop the server (fast shutdown).
    pub fn stop(&self) -> anyhow::Result<()> {
        self.run_pg("pg_ctl", |c| {
            c.arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "fast", "-w", "stop"])
        })
    }

    /// A detached shell that waits for this process to end, then stops the server and
    /// removes its directory.
    fn spawn_watchdog(&self) -> anyhow::Result<()> {
        let pg_ctl = self.command("pg_ctl");
        let mut stop: Vec<String> = std::iter::once(pg_ctl.get_program())
            .chain(pg_ctl.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        stop.extend([
            "-D".into(),
            self.dir.join("data").display().to_string(),
            "-m".into(),
            "immediate".into(),
            "stop".into(),
        ]);
        let quoted: Vec<String> = stop
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            stop = quoted.join(" "),
            dir = self.dir.display(),
        );
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn the Postgres watchdog")?;
        Ok(())
    }
}

fn run(c: &mut Command) -> anyhow::Result<()> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {:?}", c.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}{}",
            c.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
