//! LabLink's domain core, shared by every function, the holder, the client daemon and
//! the local runner.
//!
//! - [`domain`]: validated types.
//! - [`config`]: typed settings from the environment, every problem reported at once.
//! - [`credential`]: per-VM secrets and their stored hashes.
//! - [`workshop`]: who may take a seat (access code, participant list, per-address limit).
//!
//! No I/O: nothing here knows about HTTP, Lambda, Postgres or AWS. Postgres lives in
//! `lablink-db`, the wire messages between our processes in `lablink-wire`.

pub mod cidr;
pub mod config;
pub mod credential;
pub mod domain;
pub mod vm_settings;
pub mod workshop;
