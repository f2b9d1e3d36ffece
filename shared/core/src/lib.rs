//! LabLink's domain core, shared by every function, the holder, the client daemon and
//! the local runner.
//!
//! - [`domain`]: validated types (no I/O).
//! - [`config`]: typed settings from the environment, every problem reported at once.
//! - [`credential`]: per-VM secrets and their stored hashes.
//! - [`db`]: the Postgres connection, embedded migrations and every query.
//! - [`cwlogs`]: bounded decoding of CloudWatch Logs subscription batches.
//!
//! Nothing here knows about HTTP or Lambda.

pub mod config;
pub mod credential;
pub mod cwlogs;
pub mod db;
pub mod domain;
