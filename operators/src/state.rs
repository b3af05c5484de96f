//! Keyed state of the streaming operators, and the watermark that frees it.

use std::collections::HashMap;

use arrow::array::Array;

use crate::columns::Keys;

/// Per-key state, for integer and string keys alike.
#[derive(Debug)]
pub(crate) struct KeyedState<S> {
    ints: HashMap<i64, S, ahash::RandomState>,
    strs: HashMap<String, S, ahash::RandomState>,
}

impl<S> Default for KeyedState<S> {
    fn default() -> Self {
        Self {
            ints: HashMap::default(),
            strs: HashMap::default(),
        }
    }
}

impl<S: Default> KeyedState<S> {
    /// Calls `f(row, state_of_row's_key)` for every row, in order.
    pub(crate) fn for_each_row(&mut self, keys: &Keys, mut f: impl FnMut(usize, &mut S)) {
        match keys {
            Keys::Int(a) => {
                for (row, k) in a.values().iter().enumerate() {
                    f(row, self.ints.entry(*k).or_default());
                }
            }
            Keys::Str(a) => {
                for row in 0..a.len() {
                    let k = a.value(row);
                    if !self.strs.contains_key(k) {
                        self.strs.insert(k.to_owned(), S::default());
                    }
                    if let Some(state) = self.strs.get_mut(k) {
                        f(row, state);
                    }
                }
            }
        }
    }
}

/// A key's state that the watermark shrinks.
pub(crate) trait Expiring {
    /// Drops what lies at or before `horizon`: no event still to come can see it.
    fn evict(&mut self, horizon: i64);
    /// Nothing left: the key can go.
    fn is_empty(&self) -> bool;
}

impl<S: Expiring> KeyedState<S> {
    /// Moves `watermark` to `to`; when a sweep is due, shrinks every key's state and drops the
    /// keys left empty.
    pub(crate) fn advance(&mut self, watermark: &mut Watermark, to: i64) {
        if !watermark.advance(to) {
            return;
        }
        let horizon = watermark.horizon();
        let keep = |s: &mut S| {
            s.evict(horizon);
            !s.is_empty()
        };
        self.ints.retain(|_, s| keep(s));
        self.strs.retain(|_, s| keep(s));
        // A map keeps its capacity when keys go: give most of it back once it is mostly empty.
        if self.ints.len() * 4 < self.ints.capacity() {
            self.ints.shrink_to(self.ints.len() * 2);
        }
        if self.strs.len() * 4 < self.strs.capacity() {
            self.strs.shrink_to(self.strs.len() * 2);
        }
    }
}

impl<S> KeyedState<S> {
    /// Number of keys held.
    pub(crate) fn len(&self) -> usize {
        self.ints.len() + self.strs.len()
    }
}

/// The watermark as an operator sees it: no event at or before it arrives any more. It only
/// moves forward, and a sweep over every key happens once it has moved a fraction of the
/// operator's reach (how far back from an event its windows look) since the last one, so
/// sweeping costs little per event while memory stays bounded by the events inside the windows
/// (plus that fraction).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watermark {
    at: i64,
    swept: i64,
    reach: i64,
}

/// Sweeps happen every `1 / SWEEP_FRACTION` of the longest window.
const SWEEP_FRACTION: i64 = 16;

impl Watermark {
    /// No watermark yet, for an operator whose windows reach `reach` ns back.
    pub(crate) fn new(reach: i64) -> Self {
        Self {
            at: i64::MIN,
            swept: i64::MIN,
            reach,
        }
    }

    /// Moves to `watermark` (never back); true when the keys are due a sweep.
    fn advance(&mut self, watermark: i64) -> bool {
        if watermark <= self.at {
            return false;
        }
        self.at = watermark;
        let every = (self.reach / SWEEP_FRACTION).max(1);
        if self.swept == i64::MIN || watermark.saturating_sub(self.swept) >= every {
            self.swept = watermark;
            return true;
        }
        false
    }

    /// Events at or before this are outside every window of every event still to come.
    pub(crate) fn horizon(&self) -> i64 {
        self.at.saturating_sub(self.reach)
    }
}
