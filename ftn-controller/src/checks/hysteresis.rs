//! The per-check up/down state machine.

// ------------------------------------------------------------------------------------------------
// Hysteresis
// ------------------------------------------------------------------------------------------------

/// The per-check up/down state machine.
///
/// From up, `fall` consecutive failures turn it down; from down, `rise` consecutive successes
/// turn it up. A result agreeing with the current state resets the streak.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hysteresis {
    pub(super) up: bool,
    /// Consecutive results contradicting `up`.
    pub(super) streak: u32,
    pub(super) rise: u32,
    pub(super) fall: u32,
}

impl Hysteresis {
    /// `rise` and `fall` below 1 are treated as 1.
    pub fn new(up: bool, rise: u32, fall: u32) -> Self {
        Self {
            up,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// Records one probe result; returns the new state when it flips.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Consecutive results so far that contradict the current state.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    pub fn rise(&self) -> u32 {
        self.rise
    }

    pub fn fall(&self) -> u32 {
        self.fall
    }
}
