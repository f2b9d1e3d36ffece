//! `with-postgres <command> [args...]`: start one throwaway Postgres cluster, run the
//! command with `DATABASE_URL` pointing at it, then remove the cluster. The README's
//! test command wraps `cargo test` in it so the whole run shares one server.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!("usage: with-postgres <command> [args...]");
        return ExitCode::from(2);
    };
    let cluster = match lablink_testkit::pg::Cluster::start() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("with-postgres: cannot start Postgres: {e:#}");
            return ExitCode::from(1);
        }
    };
    eprintln!("with-postgres: Postgres on {}", cluster.admin_url());
    let status = Command::new(program)
        .args(rest)
        .env("DATABASE_URL", cluster.admin_url())
        .status();
    let _ = cluster.stop();
    let _ = std::fs::remove_dir_all(&cluster.dir);
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("with-postgres: cannot run {program}: {e}");
            ExitCode::from(1)
        }
    }
}
