//! How far a request has gone toward its server: written by the request body as the upstream connection
//! takes its frames, read by the attempt's deadline (`forward/deadline.rs`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::now_ms;

/// The request body waits for the client.
const WAITING_ON_CLIENT: u64 = u64::MAX;
/// Set with the time the whole request was handed to the server's connection.
const ENDED: u64 = 1 << 63;

/// How far a request body has gone toward its server, shared by the body (which writes it) and the
/// attempt's deadline (which reads it): one atomic word, a [`now_ms`] time with a state.
#[derive(Debug)]
pub struct SendProgress(AtomicU64);

/// What [`SendProgress`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sending {
    /// The server's connection has owed progress since this time (it was handed a frame, or the head).
    Upstream(u64),
    /// The body waits for the client (its own `client_body_timeout` runs).
    Client,
    /// The whole request was handed to the server's connection at this time.
    Ended(u64),
}

impl Default for SendProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl SendProgress {
    /// A request whose head is being sent now.
    pub fn new() -> Self {
        Self(AtomicU64::new(now_ms()))
    }

    /// The server's connection was handed something to send now.
    pub fn handed(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    /// The body waits for the client.
    pub fn waiting_on_client(&self) {
        self.0.store(WAITING_ON_CLIENT, Ordering::Relaxed);
    }

    /// The whole request has been handed to the server's connection.
    pub fn ended(&self) {
        self.0.store(ENDED | now_ms(), Ordering::Relaxed);
    }

    /// Where the request is.
    pub fn get(&self) -> Sending {
        match self.0.load(Ordering::Relaxed) {
            WAITING_ON_CLIENT => Sending::Client,
            word if word & ENDED != 0 => Sending::Ended(word & !ENDED),
            since => Sending::Upstream(since),
        }
    }
}
