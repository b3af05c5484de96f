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
        // Windows are short lists: sorting references beats hashing owned text.
        let mut seen: Vec<&str> = window.texts_latest_first().flatten().collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len() as f64
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
