//! `distinct`: how many different values the window's events carry (any field, compared as
//! text).

use arrow::datatypes::DataType;

use crate::aggregate::{Doc, Kind, Twin, Window};

pub(crate) struct Distinct;

/// What the twin writes in place of a null (removed before counting): no value's text.
const NULL_MARK: &str = "\u{0}riskpipe:null\u{0}";

impl Kind for Distinct {
    fn name(&self) -> &'static str {
        "distinct"
    }

    fn reads_text(&self) -> bool {
        true
    }

    fn output(&self) -> DataType {
        DataType::Int64
    }

    fn value(&self, window: &Window<'_>) -> f64 {
        // An open-addressing set of the window's (hash, text), at most half full: a probe that
        // meets an equal hash compares the texts, so a collision never merges two values.
        let slots = (2 * window.len()).next_power_of_two().max(8);
        let mask = slots - 1;
        let mut set: Vec<Option<(u64, &str)>> = vec![None; slots];
        let mut distinct = 0u32;
        for (hash, text) in window.hashed_texts_latest_first() {
            let Some(text) = text else { continue };
            // Hashes are ahash output: any bits will do as the slot.
            let mut slot = hash as usize & mask;
            loop {
                match set[slot] {
                    None => {
                        set[slot] = Some((hash, text));
                        distinct += 1;
                        break;
                    }
                    Some((h, t)) if h == hash && t == text => break,
                    Some(_) => slot = (slot + 1) & mask,
                }
            }
        }
        f64::from(distinct)
    }

    fn twin(&self, twin: &Twin) -> String {
        let marked = format!("COALESCE({}, '{NULL_MARK}')", twin.text);
        let (a, b) = twin.parts_of("ARRAY_AGG", &marked);
        format!(
            "COALESCE(cardinality(array_remove(array_distinct(array_concat(COALESCE({a}, []), COALESCE({b}, []))), '{NULL_MARK}')), 0)"
        )
    }

    fn doc(&self) -> Doc {
        Doc {
            definition: "the number of different values (compared as text: Arrow's cast of the field to Utf8); a null is no value",
            empty: "0",
            example: r#"{ key = "card.id", kind = "distinct", value = "merchant.country", spans = ["1h"], name = "card_countries_{span}" }"#,
        }
    }
}

crate::register_kind!(Distinct);

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::Distinct;
    use crate::aggregate::{Kind, Window};

    /// Two different values whose hashes collide still count as two; equal ones as one; a null
    /// as none.
    #[test]
    fn a_hash_collision_never_merges_two_values() {
        let times: VecDeque<i64> = (0..5).collect();
        let same = f64::from_bits(42);
        let values: VecDeque<f64> = [same, same, same, 0.0, f64::from_bits(7)].into();
        let texts: VecDeque<Option<Box<str>>> = [Some("a"), Some("b"), Some("a"), None, Some("c")]
            .map(|t| t.map(Box::from))
            .into();
        let window = Window::new(&times, &values, 0, 5, 4, 10).with_texts(&texts);
        assert_eq!(Distinct.value(&window), 3.0);
        let window = Window::new(&times, &values, 2, 4, 4, 10).with_texts(&texts);
        assert_eq!(Distinct.value(&window), 1.0);
    }
}
