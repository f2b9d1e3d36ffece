//! Data export: the participants' result files from every VM, in one download, with no
//! inbound connection to any VM.
//!
//! - [`storage`]: where VM archives and the zip go ([`storage::S3Storage`] on AWS,
//!   [`storage::LocalStorage`] in the local runner) and the per-VM upload URLs.
//! - [`assemble`]: every VM's archive into one streamed zip with `manifest.csv`.
//! - [`zip`]: the streaming zip writer.
//! - `spill`: what grows by a record per file (the central directory, `manifest.csv`),
//!   in a temporary file past 64 KiB.

pub mod assemble;
mod spill;
pub mod storage;
pub mod zip;

pub use assemble::{Assembled, VmPart, assemble, zip_name};
pub use storage::{Download, ExportStorage, LocalStorage, S3Storage, StorageError};
