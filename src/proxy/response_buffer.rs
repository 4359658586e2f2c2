//! Response buffering (nginx `proxy_buffering`): the answer is read as fast as its server sends it, into
//! memory up to `buffer_size` and then a temp file, so the server's connection is free once the answer is
//! complete while a slow client is fed from the buffer. Past `max_temp_file_size`, or when no temp file can
//! be written, the rest of the answer goes at the client's pace.
//!
//! A small answer that is already whole when its head is parsed is held as it is, with no task; a larger
//! one gets a pump task that reads the server while the client's body reads the buffer.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;

use super::body::Upstream;
use super::h1conn::BoxError;
use super::spool::{BufferSettings, MemoryCharge, TempFile, FILE_READ};

/// An answer read ahead of the client.
#[derive(Debug)]
pub struct Buffered {
    state: Held,
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
            queue: VecDeque::new(),
            memory: 0,
            charge: MemoryCharge::new(&settings.response_gauges),
            file: None,
            file_usable: settings.max_temp_file_size > 0,
            end: None,
            reader: None,
            pump: None,
            pump_needs_room: false,
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
        tokio::spawn(pump(upstream, Arc::clone(&shared), Arc::clone(settings)));
        Self {
            state: Held::Pumped(shared),
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
        let polled = match &mut this.state {
            Held::Whole { frames, error } => match frames.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => Poll::Ready(error.take().map(Err)),
            },
            Held::Pumped(shared) => shared.read(cx),
            Held::Done => Poll::Ready(None),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => this.handed(frame),
            Poll::Ready(_) => this.state = Held::Done,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
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
            if let Some(pump) = state.pump.take() {
                pump.wake();
            }
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
    queue: VecDeque<Segment>,
    /// Bytes of the queue in memory.
    memory: usize,
    charge: MemoryCharge,
    file: Option<TempFile>,
    /// More may go to the temp file (not past `max_temp_file_size`, no failed write).
    file_usable: bool,
    end: Option<End>,
    reader: Option<Waker>,
    pump: Option<Waker>,
    /// The pump waits for the client to take something.
    pump_needs_room: bool,
    reader_gone: bool,
}

impl State {
    fn keep_in_memory(&mut self, data: Bytes) {
        self.memory += data.len();
        self.charge.add(data.len());
        self.queue.push_back(Segment::Memory(data));
    }

    fn has_room(&self, settings: &BufferSettings) -> bool {
        self.memory < settings.buffer_size || self.file_usable
    }

    /// Queues `data`: in memory while it fits, else in the temp file while that is usable, else in
    /// memory anyway (and the pump then waits for the client).
    fn store(&mut self, data: Bytes, settings: &BufferSettings) {
        if self.memory + data.len() <= settings.buffer_size || !self.file_usable {
            self.keep_in_memory(data);
            return;
        }
        let written = self.file.as_ref().map_or(0, TempFile::len);
        if written + data.len() as u64 > settings.max_temp_file_size {
            // nginx's rule: past max_temp_file_size the answer goes at the client's pace.
            settings.response_gauges.fallback_max_temp_file_size.inc();
            self.file_usable = false;
            self.keep_in_memory(data);
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
                self.keep_in_memory(data);
            }
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
                    state.memory -= data.len();
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
                return match state.end.take() {
                    Some(End::Done(trailers)) => {
                        Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
                    }
                    Some(End::Failed(error)) => Poll::Ready(Some(Err(error))),
                    None => {
                        if !state
                            .reader
                            .as_ref()
                            .is_some_and(|w| w.will_wake(cx.waker()))
                        {
                            state.reader = Some(cx.waker().clone());
                        }
                        Poll::Pending
                    }
                };
            }
        };
        if state.pump_needs_room {
            state.pump_needs_room = false;
            if let Some(pump) = state.pump.take() {
                pump.wake();
            }
        }
        Poll::Ready(Some(data.map(Frame::data)))
    }
}

/// Reads `upstream` into the buffer until its answer ends or fails, or the client goes away.
async fn pump(mut upstream: Upstream, shared: Arc<Shared>, settings: Arc<BufferSettings>) {
    // Trailers come before the body's end, which is read too (it releases the server's count).
    let mut trailers = None;
    loop {
        let polled = std::future::poll_fn(|cx| {
            {
                let mut state = shared.state.lock();
                if state.reader_gone {
                    return Poll::Ready(None);
                }
                if !state.pump.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    state.pump = Some(cx.waker().clone());
                }
                if !state.has_room(&settings) {
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
                Ok(data) => state.store(data, &settings),
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
                queue: VecDeque::new(),
                memory: 0,
                charge: MemoryCharge::new(&settings.response_gauges),
                file: None,
                file_usable: settings.max_temp_file_size > 0,
                end: Some(End::Done(None)),
                reader: None,
                pump: None,
                pump_needs_room: false,
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
