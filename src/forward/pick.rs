//! Choosing the server for one attempt: the primaries, then the backups, then (with
//! `all_unhealthy = "fail_open"`) any server; and, when every server left is at its `max_conns`, a wait in
//! the pool's queue (bounded in length and time) instead of piling up.

use std::net::IpAddr;

use tracing::warn;

use crate::balance::PickContext;
use crate::clock::now_ms;
use crate::config::AllUnhealthy;
use crate::message::error::ProxyError;
use crate::snapshot::{Pool, TierKind, Tried};
use crate::upstream::{InFlightGuard, Waited};

/// The server an attempt goes to, counted in flight.
pub struct Picked {
    /// Its tier.
    pub kind: TierKind,
    /// Its index in the tier.
    pub index: usize,
    /// Its in-flight count, held.
    pub guard: InFlightGuard,
}

/// The picking state of one request across its attempts.
pub struct Picker<'a> {
    pool: &'a Pool,
    client_ip: IpAddr,
    key_hash: Option<u64>,
    /// Primary servers already tried (never picked again for this request).
    pub tried_primary: Tried,
    tried_backup: Tried,
    /// When this request's time in the queue runs out, once it first waited.
    queued_until: Option<tokio::time::Instant>,
}

impl<'a> Picker<'a> {
    /// A picker for one request to `pool`.
    pub fn new(pool: &'a Pool, client_ip: IpAddr, key_hash: Option<u64>) -> Self {
        Self {
            pool,
            client_ip,
            key_hash,
            tried_primary: Tried::new(),
            tried_backup: Tried::new(),
            queued_until: None,
        }
    }

    /// The server for attempt `attempt` (`first`: no attempt has had an outcome yet); `Ok(None)` when
    /// none is left; `Err` when every server left is full and the queue is full or its wait ran out.
    pub async fn next(
        &mut self,
        first: bool,
        attempt: usize,
    ) -> Result<Option<Picked>, ProxyError> {
        let Some(queue) = self.pool.queue.clone() else {
            // No server has max_conns: no queue, and the in-flight count is a plain increment.
            let Some((kind, index)) = self.choose(first, attempt) else {
                return Ok(None);
            };
            return Ok(self.server(kind, index).map(|server| Picked {
                kind,
                index,
                guard: server.in_flight_guard(),
            }));
        };
        loop {
            let listening = queue.listen();
            tokio::pin!(listening);
            listening.as_mut().enable();
            match self.choose(first, attempt) {
                Some((kind, index)) => {
                    let Some(server) = self.server(kind, index) else {
                        return Ok(None);
                    };
                    if let Some(guard) = server.try_in_flight_guard(Some(&queue)) {
                        return Ok(Some(Picked { kind, index, guard }));
                    }
                    // Another request took its last slot since the balancer looked: wait like the rest.
                    self.untry(kind, index);
                }
                None if !self.any_full_left() => return Ok(None),
                None => {}
            }
            let deadline = *self
                .queued_until
                .get_or_insert_with(|| tokio::time::Instant::now() + self.pool.queue_timeout);
            match queue.wait(listening, self.pool.queue_size, deadline).await {
                Waited::Freed => {}
                Waited::Full => return Err(ProxyError::Overloaded { queued: false }),
                Waited::TimedOut => return Err(ProxyError::Overloaded { queued: true }),
            }
        }
    }

    /// Whether picking has waited in the pool's queue (a server at its `max_conns`).
    pub fn waited(&self) -> bool {
        self.queued_until.is_some()
    }

    fn server(&self, kind: TierKind, index: usize) -> Option<&'a crate::upstream::Server> {
        self.pool.tier(kind)?.servers.get(index)
    }

    /// Whether a server not yet tried is only out because it is at its `max_conns`.
    fn any_full_left(&self) -> bool {
        let now = now_ms();
        let full_left = |servers: &[crate::upstream::Server], tried: &[usize]| {
            servers.iter().enumerate().any(|(i, server)| {
                !tried.contains(&i) && server.state.is_full() && server.state.healthy(now)
            })
        };
        full_left(&self.pool.primary.servers, &self.tried_primary)
            || self
                .pool
                .backup
                .as_ref()
                .is_some_and(|tier| full_left(&tier.servers, &self.tried_backup))
    }

    fn untry(&mut self, kind: TierKind, index: usize) {
        let tried = match kind {
            TierKind::Primary => &mut self.tried_primary,
            TierKind::Backup => &mut self.tried_backup,
        };
        if let Some(position) = tried.iter().rposition(|&i| i == index) {
            tried.remove(position);
        }
    }

    /// Asks the balancers, primaries first, and marks the choice as tried.
    fn choose(&mut self, first: bool, attempt: usize) -> Option<(TierKind, usize)> {
        let base = PickContext {
            client_ip: self.client_ip,
            key_hash: self.key_hash,
            tried: &[],
            now_ms: now_ms(),
        };
        let (kind, index) = match self.pool.primary.pick(base, &mut self.tried_primary) {
            Some(index) => Some((TierKind::Primary, index)),
            None => self
                .pool
                .backup
                .as_ref()
                .and_then(|tier| tier.pick(base, &mut self.tried_backup))
                .map(|index| (TierKind::Backup, index)),
        }
        .or_else(|| fail_open_pick(self.pool, first, attempt, &self.tried_primary))?;
        match kind {
            TierKind::Primary => self.tried_primary.push(index),
            TierKind::Backup => self.tried_backup.push(index),
        }
        Some((kind, index))
    }
}

/// With `all_unhealthy = "fail_open"`, a request that found no healthy server at all goes to any primary
/// server anyway (Envoy's panic mode); a request that already tried servers does not start over.
fn fail_open_pick(
    pool: &Pool,
    nothing_tried_yet: bool,
    turn: usize,
    tried: &[usize],
) -> Option<(TierKind, usize)> {
    if pool.all_unhealthy != Some(AllUnhealthy::FailOpen) || !nothing_tried_yet {
        return None;
    }
    let turn = turn + fastrand::usize(..pool.primary.servers.len().max(1));
    let index = pool.primary.pick_any(turn, tried)?;
    warn!(pool = %pool.name, server = %pool.primary.servers[index].addr, "no healthy server: failing open");
    Some((TierKind::Primary, index))
}
