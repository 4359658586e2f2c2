//! TLS session tickets with a bounded life: the ticket key is replaced every half `session_ticket_lifetime`
//! and the previous one kept for one more half, so a ticket is accepted for at most the lifetime and a key
//! that leaks exposes at most that much recorded traffic (the forward-secrecy trade-off of tickets).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use rustls::server::ProducesTickets;

/// One generation of ticket key: rustls's AEAD ticketer with a fresh random key.
type Key = Arc<dyn ProducesTickets>;

/// Keys in use: the one that encrypts, the one before it (still decrypts), and when the current began.
#[derive(Debug)]
struct Keys {
    current: Key,
    previous: Option<Key>,
    since: Instant,
}

/// Session tickets accepted for at most `lifetime` (see the module doc).
#[derive(Debug)]
pub struct RotatingTickets {
    lifetime: Duration,
    keys: RwLock<Keys>,
}

impl RotatingTickets {
    /// Tickets for `lifetime` (at least 2 s); `None` when no key can be made (no system randomness).
    pub fn new(lifetime: Duration) -> Option<RotatingTickets> {
        Some(RotatingTickets {
            lifetime: lifetime.max(Duration::from_secs(2)),
            keys: RwLock::new(Keys {
                current: fresh_key()?,
                previous: None,
                since: Instant::now(),
            }),
        })
    }

    /// The keys now, replacing the current one when half the lifetime has passed since it began (and
    /// dropping both when a whole lifetime has: nothing they made may still be accepted).
    fn keys(&self) -> (Key, Option<Key>) {
        let half = self.lifetime / 2;
        {
            let keys = self.keys.read();
            if keys.since.elapsed() < half {
                return (Arc::clone(&keys.current), keys.previous.clone());
            }
        }
        let mut keys = self.keys.write();
        let age = keys.since.elapsed();
        if age >= half {
            if let Some(next) = fresh_key() {
                let old = std::mem::replace(&mut keys.current, next);
                keys.previous = (age < self.lifetime).then_some(old);
                keys.since = Instant::now();
            }
        }
        (Arc::clone(&keys.current), keys.previous.clone())
    }
}

fn fresh_key() -> Option<Key> {
    rustls::crypto::ring::Ticketer::new().ok()
}

impl ProducesTickets for RotatingTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.keys().0.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let (current, previous) = self.keys();
        current
            .decrypt(cipher)
            .or_else(|| previous.and_then(|key| key.decrypt(cipher)))
    }
}

/// The ticketer for `lifetime`, the same for every listener config built with it, so a reload does not
/// invalidate the tickets clients hold.
pub fn shared(lifetime: Duration) -> Option<Arc<dyn ProducesTickets>> {
    static BY_LIFETIME: OnceLock<Mutex<HashMap<Duration, Arc<RotatingTickets>>>> = OnceLock::new();
    let mut map = BY_LIFETIME.get_or_init(Mutex::default).lock();
    if let Some(tickets) = map.get(&lifetime) {
        return Some(Arc::clone(tickets) as Arc<dyn ProducesTickets>);
    }
    let tickets = Arc::new(RotatingTickets::new(lifetime)?);
    map.insert(lifetime, Arc::clone(&tickets));
    Some(tickets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_accepted_for_at_most_its_lifetime() {
        let tickets = RotatingTickets::new(Duration::from_secs(2)).expect("a ticketer");
        assert_eq!(tickets.lifetime(), 2);
        let ticket = tickets.encrypt(b"session").expect("a ticket");
        assert_eq!(tickets.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        // Half a lifetime on: a new key encrypts, the old one still decrypts.
        tickets.keys.write().since -= Duration::from_secs(1);
        let newer = tickets.encrypt(b"later").expect("a ticket");
        assert_eq!(tickets.decrypt(&ticket).as_deref(), Some(&b"session"[..]));
        assert_eq!(tickets.decrypt(&newer).as_deref(), Some(&b"later"[..]));
        // Another half on: the first ticket's key is gone.
        tickets.keys.write().since -= Duration::from_secs(1);
        assert_eq!(tickets.decrypt(&ticket), None);
        assert_eq!(tickets.decrypt(&newer).as_deref(), Some(&b"later"[..]));
        // A whole lifetime idle: neither survives.
        let last = tickets.encrypt(b"last").expect("a ticket");
        tickets.keys.write().since -= Duration::from_secs(3);
        assert_eq!(tickets.decrypt(&last), None);
        assert_eq!(tickets.decrypt(&b"garbage"[..]), None);
    }
}
