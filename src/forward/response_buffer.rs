//! Response buffering (nginx `proxy_buffering`): an answer whose client stops taking it is read from its
//! server as fast as the server sends it, into memory up to `buffer_size` and then a temp file, so the
//! server's connection is free once the answer is complete while the slow client is fed from the buffer.
//! Past `max_temp_file_size`, or when no temp file can be written, the rest goes at the client's pace.
//!
//! A client that keeps up reads its answer straight from the server, as without buffering (no copy, no
//! task switch per read). What the server has sent when the head is parsed is taken at once: most small
//! answers are whole by then and need nothing more. A larger one gets a pump task that wakes every
//! [`SPILL_AFTER`]; once the client has left a piece untaken for that long, the pump takes over the
//! server's side and reads the rest ahead of it (nginx spills to its temp file when its buffers are full
//! and the client's socket takes nothing).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;

use crate::forward::body::Upstream;
use crate::message::spool::{BufferSettings, MemoryCharge, TempFile, FILE_READ};
use crate::upstream_client::h1conn::BoxError;

/// `X-Accel-Buffering`, nginx's header by which an answer turns buffering on or off for itself.
static X_ACCEL_BUFFERING: http::header::HeaderName =
    http::header::HeaderName::from_static("x-accel-buffering");

/// Whether an answer with `headers` is read ahead of its client: `buffering` as configured, unless the
/// answer's `X-Accel-Buffering` says otherwise (the header is removed, as nginx does); never an event
/// stream or an HTTP/2 upstream's answer (gRPC and other streams stay streams).
pub fn buffers_answer(
    headers: &mut http::HeaderMap,
    buffering: bool,
    protocol: crate::config::UpstreamProtocol,
) -> bool {
    let accel = headers.remove(&X_ACCEL_BUFFERING);
    let wanted = match accel.as_ref().map(|v| v.as_bytes()) {
        Some(v) if v.eq_ignore_ascii_case(b"no") => false,
        Some(v) if v.eq_ignore_ascii_case(b"yes") => true,
        _ => buffering,
    };
    let event_stream = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    wanted && !event_stream && protocol == crate::config::UpstreamProtocol::Http1
}

/// An answer read ahead of the client.
#[derive(Debug)]
pub struct Buffered {
    state: Held,
    /// A failure held back for one poll: the data handed out before it goes to the client first (hyper
    /// drops what it has buffered when a body fails).
    deferred: Option<BoxError>,
    /// Something was handed out since the last pending poll.
    handed_since_wait: bool,
    /// The answer's length as its server announced it, less what the client has had.
    remaining: Option<u64>,
}

#[derive(Debug)]
enum Held {
    /// The whole answer, read before it was handed to the client.
    Whole {
        frames: VecDeque<Frame<Bytes>>,
        error: Option<BoxError>,
    },
    /// Read by a pump task.
    Pumped(Arc<Shared>),
    /// Everything was handed out.
    Done,
}

impl Buffered {
    /// Starts reading `upstream` ahead of the client under `settings`.
    pub fn start(mut upstream: Upstream, settings: &Arc<BufferSettings>) -> Self {
        let remaining = upstream.size_hint().exact();
        // What the server has sent already is taken here: most small answers arrive with their head and
        // need no task. A poll that finds nothing registers no one, and the pump polls again at once.
        let mut cx = Context::from_waker(Waker::noop());
        let mut frames = VecDeque::new();
        let mut held = 0;
        let first_frames = loop {
            match Pin::new(&mut upstream).poll_frame(&mut cx) {
                Poll::Ready(None) => break None,
                Poll::Ready(Some(Err(error))) => break Some(error),
                Poll::Ready(Some(Ok(frame))) => {
                    held += frame.data_ref().map_or(0, Bytes::len);
                    frames.push_back(frame);
                    if upstream.is_end_stream() {
                        break None;
                    }
                    if held >= settings.buffer_size {
                        return Self::pumped(upstream, frames, settings, remaining);
                    }
                }
                Poll::Pending => return Self::pumped(upstream, frames, settings, remaining),
            }
        };
        Self {
            state: Held::Whole {
                frames,
                error: first_frames,
            },
            deferred: None,
            handed_since_wait: false,
            remaining,
        }
    }

    fn pumped(
        upstream: Upstream,
        frames: VecDeque<Frame<Bytes>>,
        settings: &Arc<BufferSettings>,
        remaining: Option<u64>,
    ) -> Self {
        let mut state = State {
            upstream: Some(upstream),
            reader_waiting: false,
            reader_took_at: crate::clock::now_ms(),
            queue: VecDeque::new(),
            charge: MemoryCharge::new(&settings.response_gauges),
            file: None,
            file_usable: settings.max_temp_file_size > 0,
            end: None,
            reader: None,
            pump: None,
            pump_needs_room: false,
            spilling: false,
            reader_gone: false,
        };
        for frame in frames {
            match frame.into_data() {
                Ok(data) => state.keep_in_memory(data),
                Err(frame) => state.end = Some(End::Done(frame.into_trailers().ok())),
            }
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
        });
        tokio::spawn(pump(Arc::clone(&shared), Arc::clone(settings)));
        Self {
            state: Held::Pumped(shared),
            deferred: None,
            handed_since_wait: false,
            remaining,
        }
    }

    fn handed(&mut self, frame: &Frame<Bytes>) {
        if let (Some(left), Some(data)) = (self.remaining.as_mut(), frame.data_ref()) {
            *left = left.saturating_sub(data.len() as u64);
        }
    }
}

impl Body for Buffered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(error) = this.deferred.take() {
            this.state = Held::Done;
            return Poll::Ready(Some(Err(error)));
        }
        let polled = match &mut this.state {
            Held::Whole { frames, error } => match frames.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => Poll::Ready(error.take().map(Err)),
            },
            Held::Pumped(shared) => shared.read(cx),
            Held::Done => Poll::Ready(None),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.handed(&frame);
                this.handed_since_wait = true;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) if this.handed_since_wait => {
                this.deferred = Some(error);
                this.handed_since_wait = false;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(end) => {
                this.state = Held::Done;
                Poll::Ready(end)
            }
            Poll::Pending => {
                this.handed_since_wait = false;
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.deferred.is_some() {
            return false;
        }
        match &self.state {
            Held::Whole { frames, error } => frames.is_empty() && error.is_none(),
            Held::Pumped(_) => false,
            Held::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

impl Drop for Buffered {
    fn drop(&mut self) {
        if let Held::Pumped(shared) = &self.state {
            let mut state = shared.state.lock();
            // The client went away: the pump stops, and the server's connection closes unless its
            // answer was complete.
            state.reader_gone = true;
            state.wake_pump();
        }
    }
}

/// What the pump and the client's body share.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
}

/// A piece of the answer, in order: in memory, or a range of the temp file.
#[derive(Debug)]
enum Segment {
    Memory(Bytes),
    File { from: u64, to: u64 },
}

#[derive(Debug)]
enum End {
    /// The answer ended, with trailers or not.
    Done(Option<HeaderMap>),
    /// The server's answer failed (cut, timed out): the client's is cut after what was read.
    Failed(BoxError),
}

#[derive(Debug)]
struct State {
    /// The server's side, while the client's body reads it directly (`None` once the pump took it
    /// or it ended).
    upstream: Option<Upstream>,
    /// The client's last poll found nothing to take (it waits on the server, not the other way round).
    reader_waiting: bool,
    /// When the client last took a piece ([`now_ms`](crate::clock::now_ms)).
    reader_took_at: u64,
    queue: VecDeque<Segment>,
    charge: MemoryCharge,
    file: Option<TempFile>,
    /// More may go to the temp file (not past `max_temp_file_size`, no failed write).
    file_usable: bool,
    end: Option<End>,
    reader: Option<Waker>,
    pump: Option<Waker>,
    /// The pump waits for the client to take something.
    pump_needs_room: bool,
    /// The client was found slow: what does not fit in memory goes to the temp file.
    spilling: bool,
    reader_gone: bool,
}

impl State {
    fn keep_in_memory(&mut self, data: Bytes) {
        self.charge.add(data.len());
        self.queue.push_back(Segment::Memory(data));
    }

    /// Whether the memory budget is spent (one read may pass it).
    fn memory_full(&self, settings: &BufferSettings) -> bool {
        self.charge.bytes() >= settings.buffer_size
    }

    /// Whether the pump may read on: memory is left, or the client was found slow and the temp file
    /// takes the rest.
    fn has_room(&self, settings: &BufferSettings) -> bool {
        !self.memory_full(settings) || (self.spilling && self.file_usable)
    }

    /// Queues `data` for a slow client: in memory while it fits, else in the temp file while that is
    /// usable. What stays in memory is copied out of the read buffer it shares: a slow client would
    /// otherwise pin the connection's whole read buffer (up to 256k) for a few bytes.
    fn store(&mut self, data: Bytes, settings: &BufferSettings) {
        if !self.spilling
            || self.charge.bytes() + data.len() <= settings.buffer_size
            || !self.file_usable
        {
            self.keep_in_memory(Bytes::copy_from_slice(&data));
            return;
        }
        let written = self.file.as_ref().map_or(0, TempFile::len);
        if written + data.len() as u64 > settings.max_temp_file_size {
            // nginx's rule: past max_temp_file_size the answer goes at the client's pace.
            settings.response_gauges.fallback_max_temp_file_size.inc();
            self.file_usable = false;
            self.keep_in_memory(Bytes::copy_from_slice(&data));
            return;
        }
        let file = match &mut self.file {
            Some(file) => Ok(file),
            None => TempFile::create(settings, &settings.response_gauges)
                .map(|file| self.file.insert(file)),
        };
        match file.and_then(|file| file.append(&data).map(|()| file.len())) {
            Ok(to) => {
                let from = to - data.len() as u64;
                match self.queue.back_mut() {
                    Some(Segment::File { to: end, .. }) if *end == from => *end = to,
                    _ => self.queue.push_back(Segment::File { from, to }),
                }
            }
            Err(error) => {
                settings.warn_temp_failure("response", &error);
                settings.response_gauges.fallback_temp_error.inc();
                self.file_usable = false;
                self.keep_in_memory(Bytes::copy_from_slice(&data));
            }
        }
    }

    fn wake_pump(&mut self) {
        if let Some(pump) = self.pump.take() {
            pump.wake();
        }
    }

    /// Registers the pump's waker.
    fn pump_waits(&mut self, cx: &Context<'_>) {
        if !self.pump.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.pump = Some(cx.waker().clone());
        }
    }

    fn wake_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
    }
}

impl Shared {
    /// The client's next frame.
    fn read(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut state = self.state.lock();
        let data = match state.queue.front_mut() {
            Some(Segment::Memory(_)) => match state.queue.pop_front() {
                Some(Segment::Memory(data)) => {
                    state.charge.sub(data.len());
                    Ok(data)
                }
                _ => Ok(Bytes::new()),
            },
            Some(Segment::File { from, to }) => {
                let (start, end) = (*from, *to);
                let take = usize::try_from(end - start)
                    .unwrap_or(FILE_READ)
                    .min(FILE_READ);
                let read = match &state.file {
                    Some(file) => file.read_at(start, take).map_err(BoxError::from),
                    None => Err("the temp file is gone".into()),
                };
                if let (Ok(data), Some(Segment::File { from, .. })) =
                    (&read, state.queue.front_mut())
                {
                    *from += data.len() as u64;
                    if *from >= end || data.is_empty() {
                        state.queue.pop_front();
                    }
                }
                read
            }
            None => {
                let polled = match state.end.take() {
                    Some(End::Done(trailers)) => {
                        Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
                    }
                    Some(End::Failed(error)) => Poll::Ready(Some(Err(error))),
                    None => match state.upstream.as_mut() {
                        // The client keeps up: it reads the server itself.
                        Some(upstream) => {
                            let polled = Pin::new(upstream).poll_frame(cx);
                            if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                                state.upstream = None;
                                state.wake_pump();
                            }
                            polled
                        }
                        None => Poll::Pending,
                    },
                };
                state.reader_waiting = polled.is_pending();
                if polled.is_pending()
                    && !state
                        .reader
                        .as_ref()
                        .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    // Woken by the server's side too: the pump may take it over meanwhile.
                    state.reader = Some(cx.waker().clone());
                }
                if !state.reader_waiting {
                    state.reader_took_at = crate::clock::now_ms();
                }
                return polled;
            }
        };
        state.reader_waiting = false;
        state.reader_took_at = crate::clock::now_ms();
        if state.pump_needs_room {
            state.pump_needs_room = false;
            state.wake_pump();
        }
        Poll::Ready(Some(data.map(Frame::data)))
    }
}

/// How long a client may leave a piece of its answer untaken before it is taken for a slow one and the
/// pump reads the rest of the answer ahead of it.
const SPILL_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// Watches the client's side every [`SPILL_AFTER`] while it reads the server itself, takes the server's
/// side over once the client is slow, and then reads it into the buffer until the answer ends or fails,
/// or the client goes away.
async fn pump(shared: Arc<Shared>, settings: Arc<BufferSettings>) {
    let slow_ms = u64::try_from(SPILL_AFTER.as_millis()).unwrap_or(50);
    let mut timer = Box::pin(tokio::time::sleep(SPILL_AFTER));
    let upstream = std::future::poll_fn(|cx| {
        let mut state = shared.state.lock();
        loop {
            if state.reader_gone || state.upstream.is_none() {
                return Poll::Ready(None);
            }
            let now = crate::clock::now_ms();
            if !state.reader_waiting && now.saturating_sub(state.reader_took_at) >= slow_ms {
                state.spilling = true;
                return Poll::Ready(state.upstream.take());
            }
            state.pump_waits(cx);
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            timer
                .as_mut()
                .reset(tokio::time::Instant::now() + SPILL_AFTER);
        }
    })
    .await;
    if let Some(upstream) = upstream {
        read_ahead(upstream, &shared, &settings).await;
    }
}

/// Reads `upstream` into the buffer for a slow client.
async fn read_ahead(mut upstream: Upstream, shared: &Shared, settings: &BufferSettings) {
    // Trailers come before the body's end, which is read too (it releases the server's count).
    let mut trailers = None;
    loop {
        let polled = std::future::poll_fn(|cx| {
            {
                let mut state = shared.state.lock();
                if state.reader_gone {
                    return Poll::Ready(None);
                }
                state.pump_waits(cx);
                if !state.has_room(settings) {
                    state.pump_needs_room = true;
                    return Poll::Pending;
                }
            }
            Pin::new(&mut upstream).poll_frame(cx).map(Some)
        })
        .await;
        let Some(frame) = polled else {
            // The client went away; dropping `upstream` closes an unfinished answer's connection.
            return;
        };
        let mut state = shared.state.lock();
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => state.store(data, settings),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Some(Err(error)) => state.end = Some(End::Failed(error)),
            None => state.end = Some(End::Done(trailers.take())),
        }
        state.wake_reader();
        if state.end.is_some() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: Option<std::path::PathBuf>, max_temp_file_size: u64) -> BufferSettings {
        let metrics = crate::metrics::Metrics::default();
        BufferSettings {
            request: true,
            response: true,
            buffer_size: 4,
            max_temp_file_size,
            temp_dir: dir,
            request_gauges: metrics.buffers().request.clone(),
            response_gauges: metrics.buffers().response.clone(),
        }
    }

    fn shared(settings: &BufferSettings) -> Shared {
        Shared {
            state: Mutex::new(State {
                upstream: None,
                reader_waiting: false,
                reader_took_at: 0,
                queue: VecDeque::new(),
                charge: MemoryCharge::new(&settings.response_gauges),
                file: None,
                file_usable: settings.max_temp_file_size > 0,
                end: Some(End::Done(None)),
                reader: None,
                pump: None,
                pump_needs_room: false,
                spilling: true,
                reader_gone: false,
            }),
        }
    }

    fn drain(shared: &Shared) -> Vec<u8> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        loop {
            match shared.read(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    out.extend_from_slice(&frame.into_data().expect("data"))
                }
                Poll::Ready(None) => return out,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn memory_then_file_then_memory_past_max_temp_file_size_reads_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let settings = settings(Some(dir.path().to_path_buf()), 10);
        let shared = shared(&settings);
        {
            let mut state = shared.state.lock();
            for piece in ["abc", "defg", "hijk", "lmn"] {
                state.store(Bytes::from(piece), &settings);
            }
            assert_eq!(state.file.as_ref().map(TempFile::len), Some(8));
            assert!(
                !state.file_usable,
                "past max_temp_file_size the rest streams"
            );
            assert!(!state.has_room(&settings));
        }
        assert_eq!(
            settings.response_gauges.fallback_max_temp_file_size.get(),
            1
        );
        assert_eq!(drain(&shared), b"abcdefghijklmn");
        assert_eq!(settings.response_gauges.memory_bytes.get(), 0);
    }

    #[test]
    fn a_temp_dir_that_takes_no_file_keeps_the_answer_in_memory_and_counts_a_fallback() {
        // Nobody, root included, can make a file in /proc.
        let settings = settings(Some("/proc".into()), 1 << 20);
        let shared = shared(&settings);
        {
            let mut state = shared.state.lock();
            state.store(Bytes::from("abc"), &settings);
            state.store(Bytes::from("defg"), &settings);
            assert!(state.file.is_none() && !state.file_usable);
        }
        assert_eq!(settings.response_gauges.fallback_temp_error.get(), 1);
        assert_eq!(drain(&shared), b"abcdefg");
    }
}
