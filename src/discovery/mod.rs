//! Service discovery: `resolve = true` server entries re-resolved in the background (A/AAAA, or SRV with
//! `service`), so replicas that come and go behind one DNS name become and stop being servers.
//!
//! Each name has one task on the tokio runtime that runs background work (never a serving thread). An answer
//! that changes a name's set of addresses is stored in [`Discovered`] and the live state rebuilds its
//! snapshot with it; servers that stay keep their live state through the registry, as on a reload.
//! A resolver that times out or fails (SERVFAIL, REFUSED, no name server) keeps the last set; a name that
//! does not exist or has no address (NXDOMAIN, an empty answer) empties it.

mod lookup;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{Config, Discover, ResolverConfig};

pub use lookup::{LookupError, Resolver};

/// Never re-resolve more often than this, whatever the TTL says.
const FLOOR: Duration = Duration::from_secs(1);
/// Re-ask this soon after an error or an empty answer when `valid` is not set.
const RETRY: Duration = Duration::from_secs(5);
/// At most one warning per name this often while its resolution fails.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// One server found under a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Found {
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The SRV weight (0 counted as 1, capped at the config's maximum); `None` for A/AAAA answers.
    pub weight: Option<u32>,
    /// An SRV target of a priority above the lowest: a backup.
    pub backup: bool,
}

/// The current set of every name being followed; read when a snapshot is built, never per request.
#[derive(Debug, Default)]
pub struct Discovered {
    sets: Mutex<HashMap<Discover, Arc<[Found]>>>,
    /// Names that have had a first answer or error since they were added.
    settled: Mutex<HashSet<Discover>>,
}

impl Discovered {
    /// The servers found for `name` so far (none before its first answer).
    pub fn get(&self, name: &Discover) -> Arc<[Found]> {
        self.sets
            .lock()
            .get(name)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// Stores `found` for `name`; returns what was added and removed, `None` when nothing changed.
    fn set(&self, name: &Discover, found: Vec<Found>) -> Option<(Vec<Found>, Vec<Found>)> {
        let mut sets = self.sets.lock();
        let old: BTreeSet<Found> = sets
            .get(name)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default();
        let new: BTreeSet<Found> = found.iter().cloned().collect();
        let first = !sets.contains_key(name);
        if old == new && !first {
            return None;
        }
        sets.insert(
            name.clone(),
            Arc::from(new.iter().cloned().collect::<Vec<_>>()),
        );
        Some((
            new.difference(&old).cloned().collect(),
            old.difference(&new).cloned().collect(),
        ))
    }

    fn settle(&self, name: &Discover) {
        self.settled.lock().insert(name.clone());
    }

    fn forget(&self, name: &Discover) {
        self.sets.lock().remove(name);
        self.settled.lock().remove(name);
    }

    /// Whether every name of `config` has had its first answer (or error).
    pub fn settled_for(&self, config: &Config) -> bool {
        let settled = self.settled.lock();
        names(config).iter().all(|name| settled.contains(name))
    }
}

/// What discovery needs of the running proxy: the config in force and its changes, the store of found
/// servers, a rebuild when a set changes, and a count of failed resolutions. The live state implements it,
/// so this module does not reach up into it.
pub trait Publisher: Send + Sync + 'static {
    /// The config in force.
    fn config(&self) -> Arc<Config>;
    /// A receiver that changes whenever a new snapshot is published.
    fn subscribe(&self) -> watch::Receiver<u64>;
    /// The sets found so far.
    fn discovered(&self) -> &Discovered;
    /// Builds the config in force again with the sets found now, and publishes it.
    fn rebuild(&self);
    /// Counts a failed resolution of `name` (`fulcrum_resolver_errors_total`).
    fn resolver_error(&self, name: &str, reason: &str);
}

/// Every name `config` follows.
pub fn names(config: &Config) -> BTreeSet<Discover> {
    config
        .upstreams
        .values()
        .flat_map(|upstream| upstream.servers.iter())
        .filter_map(|server| server.discover.clone())
        .collect()
}

/// Follows the names of the config in force until `stop` fires: one task per name, started when a
/// snapshot names it and stopped when none does; all restarted when `[resolver]` changes.
pub async fn run<P: Publisher>(live: Arc<P>, mut stop: watch::Receiver<bool>) {
    let mut published = live.subscribe();
    let mut tasks: HashMap<Discover, JoinHandle<()>> = HashMap::new();
    let mut current: Option<(ResolverConfig, Arc<Resolver>)> = None;
    loop {
        let config = live.config();
        let wanted = names(&config);
        if !wanted.is_empty() {
            let resolver = match &current {
                Some((settings, resolver)) if *settings == config.resolver => Arc::clone(resolver),
                _ => {
                    for (_, task) in tasks.drain() {
                        task.abort();
                    }
                    let resolver = match Resolver::new(&config.resolver) {
                        Ok(resolver) => Arc::new(resolver),
                        Err(e) => {
                            warn!(error = %e, "service discovery: cannot set up the resolver; names keep their last set");
                            wait(&mut stop, &mut published).await;
                            if *stop.borrow() {
                                break;
                            }
                            continue;
                        }
                    };
                    current = Some((config.resolver.clone(), Arc::clone(&resolver)));
                    resolver
                }
            };
            for name in &wanted {
                if !tasks.contains_key(name) {
                    let task = tokio::spawn(follow(
                        Arc::clone(&live),
                        Arc::clone(&resolver),
                        name.clone(),
                        config.resolver.valid,
                    ));
                    tasks.insert(name.clone(), task);
                }
            }
        }
        tasks.retain(|name, task| {
            let keep = wanted.contains(name);
            if !keep {
                task.abort();
                live.discovered().forget(name);
            }
            keep
        });
        if wait(&mut stop, &mut published).await {
            break;
        }
    }
    for (_, task) in tasks {
        task.abort();
    }
}

/// Waits for a stop or a new snapshot; true on stop.
async fn wait(stop: &mut watch::Receiver<bool>, published: &mut watch::Receiver<u64>) -> bool {
    tokio::select! {
        _ = stop.changed() => true,
        changed = published.changed() => changed.is_err(),
    }
}

/// Resolves `name` again and again, storing each answer and rebuilding the snapshot when it changes.
async fn follow<P: Publisher>(
    live: Arc<P>,
    resolver: Arc<Resolver>,
    name: Discover,
    valid: Option<Duration>,
) {
    let mut warned: Option<Instant> = None;
    loop {
        let (wait, found) = match resolver.lookup(&name).await {
            Ok((found, ttl)) => (valid.unwrap_or(ttl), Some(found)),
            Err(error) => {
                live.resolver_error(&name.query, error.reason());
                let empties = error.empties();
                if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    warned = Some(Instant::now());
                    if empties {
                        warn!(name = %name.query, %error, "service discovery: the name has no address now; its servers are removed");
                    } else {
                        warn!(name = %name.query, %error, "service discovery: resolution failed; keeping the last set of servers");
                    }
                }
                (valid.unwrap_or(RETRY), empties.then(Vec::new))
            }
        };
        if let Some(found) = found {
            if let Some((added, removed)) = live.discovered().set(&name, found) {
                info!(
                    name = %name.query,
                    added = %list(&added),
                    removed = %list(&removed),
                    "service discovery: the set of servers changed"
                );
                live.rebuild();
            }
        }
        live.discovered().settle(&name);
        tokio::time::sleep(jittered(wait.max(FLOOR))).await;
    }
}

/// `wait` plus up to 10% more, so names with one TTL are not asked in one burst.
fn jittered(wait: Duration) -> Duration {
    wait + wait.mul_f64(fastrand::f64() * 0.1)
}

fn list(found: &[Found]) -> String {
    let addrs: Vec<String> = found.iter().map(|f| f.addr.to_string()).collect();
    format!("[{}]", addrs.join(", "))
}
