//! A streaming zip writer: entries are written once, front to back, to any `Write` (a
//! multipart upload, a file), never seeked and never buffered whole. Entries are stored
//! (participants' result files are mostly compressed formats already, and storing keeps
//! the assembly I/O-bound); CRC-32 and sizes follow each entry in a data descriptor, and
//! ZIP64 records appear only where a size, an offset or the entry count needs them.
//! Each entry's central-directory record is made when the entry ends and goes to a
//! `Spill` (a temporary file past 64 KiB), so the writer holds the same few bytes
//! whether the zip has ten entries or a million.

use std::io::{self, Write};

use crate::spill::Spill;

const LOCAL_HEADER: u32 = 0x0403_4b50;
const DATA_DESCRIPTOR: u32 = 0x0807_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const ZIP64_END: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const END: u32 = 0x0605_4b50;
/// Bit 3: sizes and CRC in a data descriptor; bit 11: names are UTF-8.
const FLAGS: u16 = 0x0808;
const MAX32: u64 = 0xFFFF_FFFF;

struct Entry {
    name: String,
    crc: u32,
    size: u64,
    offset: u64,
    dos_time: u16,
    dos_date: u16,
    zip64: bool,
}

/// Writes a zip to `W`. Call [`ZipWriter::start_entry`], write the entry's bytes, then
/// [`ZipWriter::finish_entry`]; [`ZipWriter::finish`] writes the central directory.
pub struct ZipWriter<W: Write> {
    out: CountingWriter<W>,
    /// The central directory so far, one record per finished entry.
    central: Spill,
    entries: u64,
    open: Option<(Entry, crc32fast::Hasher, u64)>,
}

impl<W: Write> ZipWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out: CountingWriter { inner: out, count: 0 },
            central: Spill::default(),
            entries: 0,
            open: None,
        }
    }

    /// The central directory's size so far (it is written at [`ZipWriter::finish`]).
    pub fn central_directory_bytes(&self) -> u64 {
        self.central.len()
    }

    /// Begin entry `name` (forward slashes; no leading slash, no `..`), modified at
    /// `mtime` (Unix seconds). `size_hint` is the expected size: at or over 4 GiB the entry
    /// gets ZIP64 sizes from the start.
    pub fn start_entry(&mut self, name: &str, mtime: i64, size_hint: u64) -> io::Result<()> {
        if self.open.is_some() {
            return Err(io::Error::other("an entry is still open"));
        }
        if name.is_empty()
            || name.starts_with('/')
            || name.split('/').any(|p| p == "..")
            || name.len() > 0xFFFF
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad entry name {name:?}"),
            ));
        }
        let (dos_time, dos_date) = dos_datetime(mtime);
        let offset = self.out.count;
        let zip64 = size_hint >= MAX32;
        let mut h = Vec::with_capacity(30 + name.len() + 20);
        put32(&mut h, LOCAL_HEADER);
        put16(&mut h, if zip64 { 45 } else { 20 });
        put16(&mut h, FLAGS);
        put16(&mut h, 0); // stored
        put16(&mut h, dos_time);
        put16(&mut h, dos_date);
        put32(&mut h, 0); // CRC: in the data descriptor
        let unknown = if zip64 { MAX32 as u32 } else { 0 };
        put32(&mut h, unknown);
        put32(&mut h, unknown);
        put16(&mut h, name.len() as u16);
        put16(&mut h, if zip64 { 20 } else { 0 });
        h.extend_from_slice(name.as_bytes());
        if zip64 {
            put16(&mut h, 0x0001);
            put16(&mut h, 16);
            put64(&mut h, 0);
            put64(&mut h, 0);
        }
        self.out.write_all(&h)?;
        let entry = Entry {
            name: name.to_owned(),
            crc: 0,
            size: 0,
            offset,
            dos_time,
            dos_date,
            zip64,
        };
        self.open = Some((entry, crc32fast::Hasher::new(), 0));
        Ok(())
    }

    /// End the open entry: its data descriptor.
    pub fn finish_entry(&mut self) -> io::Result<()> {
        let (mut entry, crc, size) = self
            .open
            .take()
            .ok_or_else(|| io::Error::other("no entry is open"))?;
        entry.crc = crc.finalize();
        entry.size = size;
        if size >= MAX32 && !entry.zip64 {
            return Err(io::Error::other(format!(
                "{} grew past 4 GiB without a size hint saying so",
                entry.name
            )));
        }
        let mut d = Vec::with_capacity(24);
        put32(&mut d, DATA_DESCRIPTOR);
        put32(&mut d, entry.crc);
        if entry.zip64 {
            put64(&mut d, size);
            put64(&mut d, size);
        } else {
            put32(&mut d, size as u32);
            put32(&mut d, size as u32);
        }
        self.out.write_all(&d)?;
        self.central.write_all(&central_record(&entry))?;
        self.entries += 1;
        Ok(())
    }

    /// A whole small entry at once.
    pub fn entry(&mut self, name: &str, mtime: i64, data: &[u8]) -> io::Result<()> {
        self.start_entry(name, mtime, data.len() as u64)?;
        self.write_all(data)?;
        self.finish_entry()
    }

    /// Write the central directory and the end records; returns the writer and the
    /// zip's total size.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        if self.open.is_some() {
            self.finish_entry()?;
        }
        let cd_start = self.out.count;
        self.central.copy_to(&mut self.out)?;
        let cd_end = self.out.count;
        let cd_size = cd_end - cd_start;
        let n = self.entries;
        let mut t = Vec::new();
        let zip64 = n >= 0xFFFF || cd_start >= MAX32 || cd_size >= MAX32;
        if zip64 {
            put32(&mut t, ZIP64_END);
            put64(&mut t, 44);
            put16(&mut t, (3 << 8) | 45);
            put16(&mut t, 45);
            put32(&mut t, 0);
            put32(&mut t, 0);
            put64(&mut t, n);
            put64(&mut t, n);
            put64(&mut t, cd_size);
            put64(&mut t, cd_start);
            put32(&mut t, ZIP64_LOCATOR);
            put32(&mut t, 0);
            put64(&mut t, cd_end);
            put32(&mut t, 1);
        }
        put32(&mut t, END);
        put16(&mut t, 0);
        put16(&mut t, 0);
        let n16 = if zip64 { 0xFFFF } else { n as u16 };
        put16(&mut t, n16);
        put16(&mut t, n16);
        put32(&mut t, if zip64 { MAX32 as u32 } else { cd_size as u32 });
        put32(&mut t, if zip64 { MAX32 as u32 } else { cd_start as u32 });
        put16(&mut t, 0);
        self.out.write_all(&t)?;
        self.out.flush()?;
        Ok((self.out.inner, self.out.count))
    }

    /// The writer, without finishing the zip (to abort it).
    pub fn into_inner(self) -> W {
        self.out.inner
    }
}

/// An entry's record in the central directory.
fn central_record(e: &Entry) -> Vec<u8> {
    let mut extra = Vec::new();
    let big_size = e.size >= MAX32 || e.zip64;
    let big_offset = e.offset >= MAX32;
    if big_size {
        put64(&mut extra, e.size);
        put64(&mut extra, e.size);
    }
    if big_offset {
        put64(&mut extra, e.offset);
    }
    let mut h = Vec::with_capacity(46 + e.name.len() + 4 + extra.len());
    put32(&mut h, CENTRAL_HEADER);
    put16(&mut h, (3 << 8) | 45); // made by: Unix, spec 4.5
    put16(&mut h, if big_size || big_offset { 45 } else { 20 });
    put16(&mut h, FLAGS);
    put16(&mut h, 0);
    put16(&mut h, e.dos_time);
    put16(&mut h, e.dos_date);
    put32(&mut h, e.crc);
    let size32 = if big_size { MAX32 as u32 } else { e.size as u32 };
    put32(&mut h, size32);
    put32(&mut h, size32);
    put16(&mut h, e.name.len() as u16);
    put16(
        &mut h,
        if extra.is_empty() {
            0
        } else {
            4 + extra.len() as u16
        },
    );
    put16(&mut h, 0); // comment
    put16(&mut h, 0); // disk
    put16(&mut h, 0); // internal attributes
    put32(&mut h, 0o100644 << 16); // a regular file, rw-r--r--
    put32(&mut h, if big_offset { MAX32 as u32 } else { e.offset as u32 });
    h.extend_from_slice(e.name.as_bytes());
    if !extra.is_empty() {
        put16(&mut h, 0x0001);
        put16(&mut h, extra.len() as u16);
        h.extend_from_slice(&extra);
    }
    h
}

/// The open entry's bytes.
impl<W: Write> Write for ZipWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (_, crc, size) = self
            .open
            .as_mut()
            .ok_or_else(|| io::Error::other("no entry is open"))?;
        let n = self.out.write(buf)?;
        crc.update(&buf[..n]);
        *size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn put16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// MS-DOS time and date (UTC; the format has no zone), clamped to 1980..2107.
fn dos_datetime(unix: i64) -> (u16, u16) {
    let t = chrono::DateTime::from_timestamp(unix, 0).unwrap_or_default();
    use chrono::{Datelike, Timelike};
    let year = t.year().clamp(1980, 2107);
    let (month, day, h, m, s) = if t.year() < 1980 {
        (1, 1, 0, 0, 0)
    } else {
        (t.month(), t.day(), t.hour(), t.minute(), t.second())
    };
    let time = ((h << 11) | (m << 5) | (s / 2)) as u16;
    let date = ((((year - 1980) as u32) << 9) | (month << 5) | day) as u16;
    (time, date)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_zip_has_its_entries_and_an_end_record() {
        let mut z = ZipWriter::new(Vec::new());
        z.entry("a/one.txt", 1_700_000_000, b"hello").unwrap();
        z.start_entry("b/two.bin", 1_700_000_000, 3).unwrap();
        z.write_all(&[1, 2, 3]).unwrap();
        z.finish_entry().unwrap();
        let (bytes, size) = z.finish().unwrap();
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(&bytes[..4], &LOCAL_HEADER.to_le_bytes());
        let end = &bytes[bytes.len() - 22..];
        assert_eq!(&end[..4], &END.to_le_bytes());
        assert_eq!(u16::from_le_bytes([end[10], end[11]]), 2, "two entries");
        // The stored bytes follow the header untouched, and the CRC is hello's.
        assert!(bytes.windows(5).any(|w| w == b"hello"));
        assert!(
            bytes
                .windows(4)
                .any(|w| w == crc32fast::hash(b"hello").to_le_bytes())
        );
    }

    #[test]
    fn names_that_escape_or_an_unfinished_entry_are_refused() {
        let mut z = ZipWriter::new(Vec::new());
        for bad in ["", "/etc/passwd", "a/../../x"] {
            assert!(z.start_entry(bad, 0, 0).is_err(), "{bad:?}");
        }
        z.start_entry("ok", 0, 0).unwrap();
        assert!(z.start_entry("again", 0, 0).is_err());
    }

    #[test]
    fn dos_time_of_a_known_instant() {
        // 2024-03-05 14:07:08 UTC
        let (t, d) = dos_datetime(1_709_647_628);
        assert_eq!(d, ((2024 - 1980) << 9) | (3 << 5) | 5);
        assert_eq!(t, (14 << 11) | (7 << 5) | 4);
    }
}
