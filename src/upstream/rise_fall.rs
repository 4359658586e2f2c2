//! The rise/fall counter of active health: consecutive failed probes take a server down, consecutive good
//! ones bring it back. A pure value type, packed into one `u64` in the server's live state; the health
//! checker writes it, a new snapshot prepares it.

use crate::config::HealthCheckConfig;

use super::ServerState;

/// Health by consecutive probe results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProbeCounter {
    /// Whether probes currently say the server is unhealthy.
    pub down: bool,
    /// Consecutive failed probes.
    pub fails: u32,
    /// Consecutive good probes.
    pub passes: u32,
}

/// What one probe result did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flip {
    /// No change of state.
    None,
    /// The server became unhealthy.
    Down,
    /// The server became healthy.
    Up,
}

impl ProbeCounter {
    /// A counter for a server that starts unhealthy (`start_unhealthy`) or healthy.
    pub fn starting(down: bool) -> Self {
        Self {
            down,
            fails: 0,
            passes: 0,
        }
    }

    /// Counts one probe result; `max_fails` failures in a row take the server down, `passes` good results in
    /// a row bring it back.
    pub fn observe(self, ok: bool, max_fails: u32, passes: u32) -> (Self, Flip) {
        if ok {
            let passes_now = self.passes.saturating_add(1);
            if self.down && passes_now >= passes {
                (Self::starting(false), Flip::Up)
            } else {
                (
                    Self {
                        fails: 0,
                        passes: passes_now,
                        ..self
                    },
                    Flip::None,
                )
            }
        } else {
            let fails_now = self.fails.saturating_add(1);
            if !self.down && fails_now >= max_fails {
                (
                    Self {
                        down: true,
                        fails: fails_now,
                        passes: 0,
                    },
                    Flip::Down,
                )
            } else {
                (
                    Self {
                        fails: fails_now,
                        passes: 0,
                        ..self
                    },
                    Flip::None,
                )
            }
        }
    }

    /// Packs into one word: bit 63 down, bits 32..63 fails, bits 0..32 passes.
    pub fn pack(self) -> u64 {
        (u64::from(self.down) << 63)
            | (u64::from(self.fails.min(i32::MAX as u32)) << 32)
            | u64::from(self.passes)
    }

    /// The inverse of [`Self::pack`].
    pub fn unpack(word: u64) -> Self {
        Self {
            down: word >> 63 == 1,
            fails: ((word >> 32) & 0x7fff_ffff) as u32,
            passes: word as u32,
        }
    }
}

/// How a pool's health-check settings apply to a server's state when a snapshot is built: a new server
/// with `start_unhealthy` waits for `passes` good probes; a server whose pool has no checks is not held out
/// by old probe results.
pub fn prepare_state(state: &ServerState, check: Option<&HealthCheckConfig>, is_new: bool) {
    match check {
        Some(check) if is_new && check.start_unhealthy => {
            state.set_probe_counter(ProbeCounter::starting(true).pack());
            state.set_active_down(true);
        }
        Some(_) => {}
        None => {
            state.set_probe_counter(ProbeCounter::default().pack());
            state.set_active_down(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: ProbeCounter, results: &[bool]) -> (ProbeCounter, Vec<Flip>) {
        let mut counter = start;
        let mut flips = Vec::new();
        for &ok in results {
            let (next, flip) = counter.observe(ok, 3, 2);
            counter = next;
            flips.push(flip);
        }
        (counter, flips)
    }

    #[test]
    fn down_after_exactly_max_fails_in_a_row() {
        let (counter, flips) = run(
            ProbeCounter::default(),
            &[false, false, true, false, false, false],
        );
        assert!(counter.down);
        assert_eq!(flips.iter().filter(|f| **f == Flip::Down).count(), 1);
        assert_eq!(
            flips[5],
            Flip::Down,
            "a good probe resets the run of failures"
        );
    }

    #[test]
    fn up_after_exactly_passes_in_a_row() {
        let (counter, flips) = run(ProbeCounter::starting(true), &[true, false, true, true]);
        assert!(!counter.down);
        assert_eq!(flips, [Flip::None, Flip::None, Flip::None, Flip::Up]);
    }

    #[test]
    fn no_flip_while_state_holds() {
        let (counter, flips) = run(ProbeCounter::default(), &[true; 5]);
        assert!(!counter.down);
        assert!(flips.iter().all(|f| *f == Flip::None));
    }

    #[test]
    fn packs_round_trip() {
        for counter in [
            ProbeCounter::default(),
            ProbeCounter {
                down: true,
                fails: 7,
                passes: 0,
            },
            ProbeCounter {
                down: false,
                fails: 0,
                passes: 12,
            },
        ] {
            assert_eq!(ProbeCounter::unpack(counter.pack()), counter);
        }
    }
}
