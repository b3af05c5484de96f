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

impl<S> KeyedState<S> {
    /// Keeps the keys whose state `keep` (which may also shrink it) returns true for.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut S) -> bool) {
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

    /// Number of keys held.
    pub(crate) fn len(&self) -> usize {
        self.ints.len() + self.strs.len()
    }
}

/// The watermark as an operator sees it: no event at or before it arrives any more. It only
/// moves forward, and a sweep over every key happens once it has moved a fraction of the
/// longest window since the last one, so sweeping costs little per event while memory stays
/// bounded by the events inside the windows (plus that fraction).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watermark {
    at: i64,
    swept: i64,
}

impl Default for Watermark {
    fn default() -> Self {
        Self {
            at: i64::MIN,
            swept: i64::MIN,
        }
    }
}

/// Sweeps happen every `1 / SWEEP_FRACTION` of the longest window.
const SWEEP_FRACTION: i64 = 16;

impl Watermark {
    /// Moves to `watermark` (never back); true when the keys are due a sweep.
    pub(crate) fn advance(&mut self, watermark: i64, span: i64) -> bool {
        if watermark <= self.at {
            return false;
        }
        self.at = watermark;
        let every = (span / SWEEP_FRACTION).max(1);
        if self.swept == i64::MIN || watermark.saturating_sub(self.swept) >= every {
            self.swept = watermark;
            return true;
        }
        false
    }

    /// Events at or before this are outside every window of length `span` of every event still
    /// to come.
    pub(crate) fn horizon(&self, span: i64) -> i64 {
        self.at.saturating_sub(span)
    }
}
