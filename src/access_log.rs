//! The access log: one line per request, nginx `combined` or JSON, to stdout or a file. Lines go through a
//! bounded queue to a writer thread, so logging never blocks a request; lines dropped when the queue is
//! full are counted. SIGUSR1 reopens the file (logrotate).

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;
use serde_json::json;

use crate::config::{AccessLogConfig, AccessLogFormat};

/// Lines queued at most before new ones are dropped (and counted).
const QUEUE: usize = 16_384;

enum Message {
    Line(String),
    Reopen,
}

/// A running access log.
#[derive(Debug)]
pub struct AccessLog {
    queue: SyncSender<Message>,
    format: AccessLogFormat,
    dropped: IntCounter,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Message")
    }
}

/// What one request's line says.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// When the request arrived.
    pub time: Option<SystemTime>,
    /// The client (after trusted-proxy resolution).
    pub client: Option<IpAddr>,
    /// Method, path with query, and HTTP version, as `GET /x?y HTTP/1.1`.
    pub request_line: String,
    /// Answer status.
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    /// `Referer` header.
    pub referer: String,
    /// `User-Agent` header.
    pub user_agent: String,
    /// Total time to the end of the answer.
    pub duration: Duration,
    /// The server that answered, if any.
    pub upstream: Option<String>,
    /// Time the server took to its response headers.
    pub upstream_time: Option<Duration>,
    /// The request ID.
    pub request_id: String,
    /// The rate-limit outcome: none, allowed, delayed, rejected, dry_run.
    pub rate_limit: &'static str,
}

impl AccessLog {
    /// Opens the log (`path = "stdout"` writes to standard output) and starts its writer thread.
    pub fn open(config: &AccessLogConfig, dropped: IntCounter) -> std::io::Result<AccessLog> {
        let mut writer = Writer::open(config.path.clone())?;
        let (queue, lines) = sync_channel::<Message>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                while let Ok(message) = lines.recv() {
                    match message {
                        Message::Line(line) => writer.write(&line),
                        Message::Reopen => writer.reopen(),
                    }
                    // Write what has queued up, then flush once.
                    while let Ok(message) = lines.try_recv() {
                        match message {
                            Message::Line(line) => writer.write(&line),
                            Message::Reopen => writer.reopen(),
                        }
                    }
                    writer.flush();
                }
            })?;
        Ok(AccessLog {
            queue,
            format: config.format,
            dropped,
        })
    }

    /// Queues one line; never waits.
    pub fn log(&self, entry: &Entry) {
        let line = match self.format {
            AccessLogFormat::Combined => combined(entry),
            AccessLogFormat::Json => json_line(entry),
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(Message::Line(line))
        {
            self.dropped.inc();
        }
    }

    /// Reopens the file (after logrotate moved it).
    pub fn reopen(&self) {
        let _ = self.queue.try_send(Message::Reopen);
    }
}

struct Writer {
    path: PathBuf,
    out: Box<dyn Write + Send>,
}

impl Writer {
    fn open(path: PathBuf) -> std::io::Result<Writer> {
        let out = Self::target(&path)?;
        Ok(Writer { path, out })
    }

    fn target(path: &PathBuf) -> std::io::Result<Box<dyn Write + Send>> {
        if path.as_os_str() == "stdout" {
            return Ok(Box::new(std::io::BufWriter::new(std::io::stdout())));
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Box::new(std::io::BufWriter::new(file)))
    }

    fn write(&mut self, line: &str) {
        let _ = self.out.write_all(line.as_bytes());
        let _ = self.out.write_all(b"\n");
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
    }

    fn reopen(&mut self) {
        self.flush();
        match Self::target(&self.path) {
            Ok(out) => self.out = out,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot reopen the access log")
            }
        }
    }
}

/// nginx `combined`, then `rt= uaddr= urt= rid= rl=` (nginx-style key=value extras that log tooling ignores).
fn combined(e: &Entry) -> String {
    let client = e
        .client
        .map_or_else(|| "-".to_string(), |ip| ip.to_string());
    let quoted = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.replace('"', "\\x22")
        }
    };
    format!(
        "{client} - - [{}] \"{}\" {} {} \"{}\" \"{}\" rt={:.3} uaddr={} urt={} rid={} rl={}",
        nginx_time(e.time.unwrap_or(UNIX_EPOCH)),
        e.request_line.replace('"', "\\x22"),
        e.status,
        e.bytes,
        quoted(&e.referer),
        quoted(&e.user_agent),
        e.duration.as_secs_f64(),
        e.upstream.as_deref().unwrap_or("-"),
        e.upstream_time
            .map_or_else(|| "-".to_string(), |t| format!("{:.3}", t.as_secs_f64())),
        if e.request_id.is_empty() {
            "-"
        } else {
            &e.request_id
        },
        e.rate_limit,
    )
}

fn json_line(e: &Entry) -> String {
    json!({
        "time": rfc3339(e.time.unwrap_or(UNIX_EPOCH)),
        "client": e.client.map(|ip| ip.to_string()),
        "request": e.request_line,
        "status": e.status,
        "bytes": e.bytes,
        "referer": e.referer,
        "user_agent": e.user_agent,
        "duration_s": e.duration.as_secs_f64(),
        "upstream": e.upstream,
        "upstream_time_s": e.upstream_time.map(|t| t.as_secs_f64()),
        "request_id": e.request_id,
        "rate_limit": e.rate_limit,
    })
    .to_string()
}

/// (year, month 1-12, day, hour, minute, second) in UTC.
fn civil(time: SystemTime) -> (i64, u32, u32, u64, u64, u64) {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rest / 3_600, rest % 3_600 / 60, rest % 60)
}

fn nginx_time(time: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s) = civil(time);
    format!(
        "{d:02}/{}/{y}:{h:02}:{mi:02}:{s:02} +0000",
        MONTHS[(mo - 1) as usize]
    )
}

fn rfc3339(time: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(time);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_in_utc() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_512_966); // 2026-11-24T09:36:06Z
        assert_eq!(rfc3339(t), "2026-11-24T09:36:06Z");
        assert_eq!(nginx_time(t), "24/Nov/2026:09:36:06 +0000");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn combined_line_has_nginx_fields_then_extras() {
        let entry = Entry {
            time: Some(UNIX_EPOCH),
            client: Some("10.0.0.1".parse().expect("ip")),
            request_line: "GET /a?b=\"c\" HTTP/1.1".into(),
            status: 200,
            bytes: 5,
            user_agent: "curl/8".into(),
            duration: Duration::from_millis(3),
            request_id: "r1".into(),
            rate_limit: "none",
            ..Entry::default()
        };
        assert_eq!(
            combined(&entry),
            "10.0.0.1 - - [01/Jan/1970:00:00:00 +0000] \"GET /a?b=\\x22c\\x22 HTTP/1.1\" 200 5 \"-\" \"curl/8\" rt=0.003 uaddr=- urt=- rid=r1 rl=none"
        );
    }
}
