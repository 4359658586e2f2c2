//! Where buffered bodies are held: memory up to `buffer_size`, then an unnamed temp file (nginx's
//! `client_body_buffer_size` / `proxy_buffers` and `proxy_temp_path`).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use crate::metrics::BufferGauges;

/// Most bytes read from a temp file for one frame.
pub const FILE_READ: usize = 64 * 1024;

/// A pool's buffering settings, resolved once per snapshot.
#[derive(Debug)]
pub struct BufferSettings {
    /// `request_buffering`.
    pub request: bool,
    /// `buffering`.
    pub response: bool,
    /// `buffer_size`: memory per body and direction before the temp file.
    pub buffer_size: usize,
    /// `max_temp_file_size`: most bytes of an answer in its temp file (0: no temp file).
    pub max_temp_file_size: u64,
    /// `[global] temp_path`; `None` is the system temp dir.
    pub temp_dir: Option<PathBuf>,
    /// Gauges of request bodies.
    pub request_gauges: BufferGauges,
    /// Gauges of answers.
    pub response_gauges: BufferGauges,
}

/// When the last "cannot write a temp file" warning was logged (ms), so a full disk logs once per 10 s.
static LAST_TEMP_WARNING: AtomicU64 = AtomicU64::new(0);

impl BufferSettings {
    /// Logs a failure to write a temp file, at most once per 10 s.
    pub fn warn_temp_failure(&self, direction: &str, error: &io::Error) {
        let now = crate::clock::now_ms();
        let last = LAST_TEMP_WARNING.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000
            && LAST_TEMP_WARNING
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let dir = self
                .temp_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir)
                .display()
                .to_string();
            tracing::warn!(direction, temp_path = %dir, %error, "cannot write a temp file for a buffered body: it streams instead");
        }
    }
}

/// An unnamed temp file (mode 0600, never linked into the directory, so nothing is left after a crash),
/// appended to and read by offset; its size is on the gauges while it is open.
#[derive(Debug)]
pub struct TempFile {
    file: File,
    len: u64,
    gauges: BufferGauges,
}

impl TempFile {
    /// Makes a temp file in `settings`' directory, counted on `gauges`.
    pub fn create(settings: &BufferSettings, gauges: &BufferGauges) -> io::Result<TempFile> {
        // O_TMPFILE where the file system has it, else created with a random name and unlinked at once.
        let file = match &settings.temp_dir {
            Some(dir) => tempfile::tempfile_in(dir)?,
            None => tempfile::tempfile()?,
        };
        gauges.temp_files.inc();
        gauges.temp_files_made.inc();
        Ok(TempFile {
            file,
            len: 0,
            gauges: gauges.clone(),
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `data`.
    pub fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, self.len)?;
        self.len += data.len() as u64;
        self.gauges.temp_file_bytes.add(data.len() as i64);
        Ok(())
    }

    /// Up to `max` bytes from `offset` (short only at the end of what was written).
    pub fn read_at(&self, offset: u64, max: usize) -> io::Result<Bytes> {
        let take = usize::try_from(self.len.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(max);
        let mut buf = BytesMut::zeroed(take);
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf.freeze())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.gauges.temp_files.dec();
        self.gauges.temp_file_bytes.sub(self.len as i64);
    }
}

/// Bytes held in memory, on the memory gauge for as long as this lives.
#[derive(Debug)]
pub struct MemoryCharge {
    bytes: i64,
    gauges: BufferGauges,
}

impl MemoryCharge {
    /// Nothing held yet.
    pub fn new(gauges: &BufferGauges) -> Self {
        Self {
            bytes: 0,
            gauges: gauges.clone(),
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        usize::try_from(self.bytes).unwrap_or(0)
    }

    /// `bytes` more are held.
    pub fn add(&mut self, bytes: usize) {
        self.bytes += bytes as i64;
        self.gauges.memory_bytes.add(bytes as i64);
    }

    /// `bytes` fewer are held.
    pub fn sub(&mut self, bytes: usize) {
        self.bytes -= bytes as i64;
        self.gauges.memory_bytes.sub(bytes as i64);
    }
}

impl Drop for MemoryCharge {
    fn drop(&mut self) {
        self.gauges.memory_bytes.sub(self.bytes);
    }
}

/// A whole request body (or the part read before the temp file failed): memory pieces, then the file.
#[derive(Debug)]
pub struct Spool {
    memory: Vec<Bytes>,
    file: Option<TempFile>,
    /// A piece the file could not take (its write failed): it comes after what the file holds.
    tail: Option<Bytes>,
    len: u64,
    charge: MemoryCharge,
}

/// Where a reader of a [`Spool`] is.
#[derive(Debug, Default, Clone, Copy)]
pub struct SpoolCursor {
    piece: usize,
    offset: u64,
    tail_read: bool,
}

impl Spool {
    /// Everything it holds.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next piece after `cursor` (advancing it), `None` at the end.
    pub fn next(&self, cursor: &mut SpoolCursor) -> Option<io::Result<Bytes>> {
        if let Some(piece) = self.memory.get(cursor.piece) {
            cursor.piece += 1;
            return Some(Ok(piece.clone()));
        }
        if let Some(file) = self.file.as_ref().filter(|f| cursor.offset < f.len()) {
            let read = file.read_at(cursor.offset, FILE_READ);
            if let Ok(data) = &read {
                cursor.offset += data.len() as u64;
            }
            return Some(read);
        }
        if cursor.tail_read {
            return None;
        }
        cursor.tail_read = true;
        self.tail.clone().map(Ok)
    }

    /// Whether `cursor` is at the end.
    pub fn at_end(&self, cursor: &SpoolCursor) -> bool {
        cursor.piece >= self.memory.len()
            && self.file.as_ref().is_none_or(|f| cursor.offset >= f.len())
            && (cursor.tail_read || self.tail.is_none())
    }
}

/// Fills a [`Spool`]: memory up to `buffer_size`, then a temp file.
#[derive(Debug)]
pub struct SpoolWriter<'a> {
    settings: &'a BufferSettings,
    spool: Spool,
}

impl<'a> SpoolWriter<'a> {
    /// An empty spool under `settings` (request gauges).
    pub fn new(settings: &'a BufferSettings) -> Self {
        Self {
            settings,
            spool: Spool {
                memory: Vec::new(),
                file: None,
                tail: None,
                len: 0,
                charge: MemoryCharge::new(&settings.request_gauges),
            },
        }
    }

    /// Adds `data`; an error means no temp file could take it (it is kept in memory then, and the
    /// caller streams the rest).
    pub fn push(&mut self, data: Bytes) -> io::Result<()> {
        self.spool.len += data.len() as u64;
        if self.spool.file.is_none()
            && self.spool.charge.bytes() + data.len() <= self.settings.buffer_size
        {
            self.keep_in_memory(data);
            return Ok(());
        }
        let written = match &mut self.spool.file {
            Some(file) => file.append(&data),
            None => TempFile::create(self.settings, &self.settings.request_gauges).and_then(
                |mut file| {
                    file.append(&data)?;
                    self.spool.file = Some(file);
                    Ok(())
                },
            ),
        };
        if written.is_err() {
            // Read after what the file holds; the caller stops filling the spool at the first error.
            self.spool.charge.add(data.len());
            if self.spool.file.is_some() {
                self.spool.tail = Some(data);
            } else {
                self.spool.memory.push(data);
            }
        }
        written
    }

    fn keep_in_memory(&mut self, data: Bytes) {
        self.spool.charge.add(data.len());
        self.spool.memory.push(data);
    }

    /// The filled spool.
    pub fn finish(self) -> Spool {
        self.spool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: Option<PathBuf>, buffer_size: usize) -> BufferSettings {
        let metrics = crate::metrics::Metrics::default();
        BufferSettings {
            request: true,
            response: true,
            buffer_size,
            max_temp_file_size: 1 << 30,
            temp_dir: dir,
            request_gauges: metrics.buffers().request.clone(),
            response_gauges: metrics.buffers().response.clone(),
        }
    }

    fn read_all(spool: &Spool) -> Vec<u8> {
        let mut cursor = SpoolCursor::default();
        let mut out = Vec::new();
        while let Some(piece) = spool.next(&mut cursor) {
            out.extend_from_slice(&piece.expect("read"));
        }
        assert!(spool.at_end(&cursor));
        out
    }

    #[test]
    fn a_body_past_buffer_size_goes_to_an_unnamed_file_and_reads_back_in_order_twice() {
        let dir = tempfile::tempdir().expect("dir");
        let settings = settings(Some(dir.path().to_path_buf()), 10);
        let mut writer = SpoolWriter::new(&settings);
        let pieces: Vec<Bytes> = (0..20u8).map(|i| Bytes::from(vec![i; 7])).collect();
        for piece in &pieces {
            writer.push(piece.clone()).expect("push");
        }
        let spool = writer.finish();
        assert_eq!(settings.request_gauges.temp_files.get(), 1);
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
        let expected: Vec<u8> = pieces.concat();
        assert_eq!(spool.len(), expected.len() as u64);
        assert_eq!(read_all(&spool), expected);
        assert_eq!(
            read_all(&spool),
            expected,
            "a second reader (a retry) gets it all again"
        );
        drop(spool);
        assert_eq!(settings.request_gauges.temp_files.get(), 0);
        assert_eq!(settings.request_gauges.temp_file_bytes.get(), 0);
        assert_eq!(settings.request_gauges.memory_bytes.get(), 0);
    }

    #[test]
    fn a_write_that_fails_after_the_file_keeps_the_order() {
        use std::os::fd::AsRawFd;
        let settings = settings(None, 4);
        let mut writer = SpoolWriter::new(&settings);
        writer.push(Bytes::from_static(b"abc")).expect("memory");
        writer.push(Bytes::from_static(b"defg")).expect("file");
        // The disk is full from here on: the same file, reopened read-only, refuses writes.
        let file = writer.spool.file.as_mut().expect("a temp file");
        let fd = file.file.as_raw_fd();
        file.file = File::open(format!("/proc/self/fd/{fd}")).expect("reopen read-only");
        assert!(writer.push(Bytes::from_static(b"hij")).is_err());
        let spool = writer.finish();
        assert_eq!(spool.len(), 10);
        assert_eq!(read_all(&spool), b"abcdefghij");
    }
}
