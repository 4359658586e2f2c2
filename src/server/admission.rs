//! Who gets in: a listener's `max_connections` and `max_connections_per_client` (nginx `limit_conn`),
//! counted over all of its accept loops, the refusals' rate-limited warning, and the open-connections gauge.

use std::sync::Arc;

use tracing::warn;

/// What all of a listener's accept loops count together: `max_connections`, `max_connections_per_client`
/// and the warning about refusals hold for the listener, not per serving thread.
#[derive(Debug, Default)]
pub struct ListenerCounts {
    pub per_client: Arc<PerClient>,
    pub open: Arc<OpenConnections>,
    pub refused: RefusalLog,
}

/// Open connections per client address (nginx `limit_conn`), sharded so accepts rarely share a lock.
#[derive(Debug, Default)]
pub struct PerClient {
    shards: [parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>; 16],
}

impl PerClient {
    /// Takes a connection slot for `ip` if it holds fewer than `max`.
    pub fn enter(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<ClientSlot> {
        let mut shard = self.shard(ip).lock();
        let open = shard.entry(ip).or_insert(0);
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(ClientSlot {
            clients: Arc::clone(self),
            ip,
        })
    }

    fn shard(
        &self,
        ip: std::net::IpAddr,
    ) -> &parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>> {
        let hash = match ip {
            std::net::IpAddr::V4(v4) => u32::from(v4) as usize,
            std::net::IpAddr::V6(v6) => u128::from(v6) as usize,
        };
        &self.shards[hash % self.shards.len()]
    }
}

/// One open connection of a client; frees its slot when dropped.
pub struct ClientSlot {
    clients: Arc<PerClient>,
    ip: std::net::IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut shard = self.clients.shard(self.ip).lock();
        if let Some(open) = shard.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                shard.remove(&self.ip);
            }
        }
    }
}

/// The open-connections gauge, counted up for one connection until dropped (with the process's count).
pub struct OpenGauge(prometheus::IntGauge);

impl OpenGauge {
    pub fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        super::serving::connection_opened();
        Self(gauge)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
        super::serving::connection_closed();
    }
}

/// A listener's open connections, against `max_connections`.
#[derive(Debug, Default)]
pub struct OpenConnections {
    open: std::sync::atomic::AtomicUsize,
}

impl OpenConnections {
    /// Counts a new connection, unless `max` are open already.
    pub fn enter(self: &Arc<Self>, max: Option<usize>) -> Option<OpenConnection> {
        use std::sync::atomic::Ordering;
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        if max.is_some_and(|max| open >= max) {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(OpenConnection(Arc::clone(self)))
    }
}

/// One counted connection; uncounted when dropped.
pub struct OpenConnection(Arc<OpenConnections>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Logs refused connections at most once a second per listener (a flood must not flood the log too).
#[derive(Debug, Default)]
pub struct RefusalLog {
    last: std::sync::atomic::AtomicU64,
    since: std::sync::atomic::AtomicU64,
}

impl RefusalLog {
    pub fn warn(&self, listener: &str, max: Option<usize>) {
        use std::sync::atomic::Ordering;
        let now = crate::clock::now_ms();
        let refused = self.since.fetch_add(1, Ordering::Relaxed) + 1;
        if now.saturating_sub(self.last.load(Ordering::Relaxed)) >= 1_000 {
            self.last.store(now, Ordering::Relaxed);
            self.since.store(0, Ordering::Relaxed);
            warn!(%listener, max_connections = max.unwrap_or(0), refused, "max_connections reached; closing new connections");
        }
    }
}
