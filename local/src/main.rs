//! `lablink-local`: tools for running LabLink on one machine.
//!
//! - `hash-password`: reads a password on stdin (one line) and prints its argon2id PHC
//!   string, the value of `LABLINK_ADMIN_PASSWORD_HASH` or of the admin secret's
//!   `password_hash` (see docs/deploy.md).
//! - `session-key`: prints a fresh random session key (64 hex characters).

use std::io::BufRead;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "lablink-local", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the argon2id hash of the password read from stdin (one line).
    HashPassword,
    /// Print a fresh random session key.
    SessionKey,
}

fn main() {
    match Cli::parse().command {
        Command::HashPassword => {
            let mut line = String::new();
            if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
                eprintln!("lablink-local: cannot read the password: {e}");
                std::process::exit(2);
            }
            let password = line.trim_end_matches(['\r', '\n']);
            if password.len() < 12 {
                eprintln!("lablink-local: use a password of at least 12 characters");
                std::process::exit(2);
            }
            println!("{}", lablink_web::auth::hash_password(password));
        }
        Command::SessionKey => println!("{}", lablink_web::auth::SessionKey::generate().to_hex()),
    }
}
