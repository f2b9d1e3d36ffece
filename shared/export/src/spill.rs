//! Bytes written once, front to back, and read back once at the end: the zip's central
//! directory and `manifest.csv`, which grow by a record per file. Up to [`IN_MEMORY`]
//! bytes they stay in memory; past that they go to an unnamed temporary file (in the
//! process's temp dir, `/tmp` on Lambda; the OS deletes it when it is dropped or the
//! process dies), so what the assembler holds does not grow with the number of files.
//! It must not be read back before the last write.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};

/// Kept in memory before the first spill; also the file's write buffer.
pub const IN_MEMORY: usize = 64 * 1024;

#[derive(Default)]
pub struct Spill {
    mem: Vec<u8>,
    file: Option<BufWriter<File>>,
    len: u64,
}

impl Spill {
    /// The bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Everything written, in order, to `out`; returns how many bytes.
    pub fn copy_to(self, out: &mut impl Write) -> io::Result<u64> {
        match self.file {
            None => {
                out.write_all(&self.mem)?;
                Ok(self.mem.len() as u64)
            }
            Some(file) => {
                let mut file = file.into_inner().map_err(io::IntoInnerError::into_error)?;
                file.seek(SeekFrom::Start(0))?;
                let copied = io::copy(&mut io::BufReader::with_capacity(IN_MEMORY, file), out)?;
                if copied != self.len {
                    return Err(io::Error::other(format!(
                        "the temporary file gave back {copied} of {} bytes",
                        self.len
                    )));
                }
                Ok(copied)
            }
        }
    }
}

impl Write for Spill {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(file) => file.write_all(buf)?,
            None if self.mem.len() + buf.len() <= IN_MEMORY => self.mem.extend_from_slice(buf),
            None => {
                let mut file = BufWriter::with_capacity(IN_MEMORY, tempfile::tempfile()?);
                file.write_all(&self.mem)?;
                file.write_all(buf)?;
                self.mem = Vec::new();
                self.file = Some(file);
            }
        }
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_goes_in_comes_back_in_order_past_the_memory_part() {
        let mut s = Spill::default();
        let mut expected = Vec::new();
        for i in 0..20_000u32 {
            let line = format!("row {i}\r\n");
            s.write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        assert!(expected.len() > 2 * IN_MEMORY);
        assert_eq!(s.len(), expected.len() as u64);
        assert!(s.mem.is_empty() && s.file.is_some(), "spilled to a file");
        let mut out = Vec::new();
        assert_eq!(s.copy_to(&mut out).unwrap(), expected.len() as u64);
        assert!(out == expected);
    }
}
