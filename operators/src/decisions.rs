//! Decisions: rules over a scored event's fields, features and scores, each naming an outcome.
//! An event's decision is the most severe outcome among the rules it matches (outcomes are
//! declared least severe first; the first is the decision when none matches); every matching
//! rule is reported, shadow rules too, which never decide. A rule's condition is an SQL
//! predicate of the one expression language ([`crate::expr`]): NULL does not match, and an
//! evaluation error is an error, never a silent default.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, ListBuilder, RecordBatch, StringArray, StringBuilder, StructBuilder,
};
use arrow::datatypes::{DataType, Field, SchemaRef};
use serde::Deserialize;

use crate::expr::{ExprError, Expression};

/// The decision rules of a job, as a config (or a rules file) states them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionsConfig {
    /// The outcomes in order of severity, least severe first (e.g. `["allow", "review",
    /// "block"]`); the first is the decision of an event no deciding rule matches.
    pub outcomes: Vec<String>,
    /// The rules, each a name, a condition and an outcome.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Reference lists the rules test membership in (`in_list('name', value)`).
    #[serde(default)]
    pub lists: Vec<ListConfig>,
}

/// One reference list (`[[decisions.lists]]`): a block list, an allow list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListConfig {
    /// Its name, as rules call it: `in_list('blocked_cards', card_id)`.
    pub name: String,
    /// A file of values, one per line (blank lines and lines starting with `#` aside),
    /// relative to the file that declares the list; read at start and at every reload.
    #[serde(default)]
    pub file: Option<std::path::PathBuf>,
    /// Values given inline (beside the file's). Values are compared as text: an integer id
    /// as its decimal digits.
    #[serde(default)]
    pub values: Vec<String>,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Its name, unique among the rules: what decisions, reports and metrics call it.
    pub name: String,
    /// When it matches: an SQL predicate over the event's fields, its features and the
    /// models' scores (e.g. `SCORE >= 0.8 AND amount > 500`; names as declared, case and all); NULL does not match.
    pub when: String,
    /// The outcome it decides, one of `outcomes`.
    pub outcome: String,
    /// Evaluated and reported, never deciding: a rule on trial.
    #[serde(default)]
    pub shadow: bool,
    /// When it matches, its outcome is the decision whatever more severe rules match (an allow
    /// list over a block); of several overriding rules that match, the most severe decides.
    #[serde(default)]
    pub overrides: bool,
}

impl DecisionsConfig {
    /// Every problem the rules have on their own, all at once: no outcomes, an outcome twice, a
    /// rule without a name or with another's, an outcome not declared, a condition that is not
    /// SQL.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.outcomes.is_empty() {
            problems.push("decisions.outcomes is empty: list at least the default outcome".into());
        }
        let mut seen = HashSet::new();
        for o in &self.outcomes {
            if !seen.insert(o.as_str()) {
                problems.push(format!("decisions.outcomes lists {o:?} twice"));
            }
        }
        let mut names = HashSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let at = if r.name.is_empty() {
                format!("decisions.rules[{i}]")
            } else {
                format!("rule {:?}", r.name)
            };
            if r.name.is_empty() {
                problems.push(format!("{at} has no name"));
            } else if !names.insert(r.name.as_str()) {
                problems.push(format!("{at} is named twice"));
            }
            if !self.outcomes.contains(&r.outcome) {
                problems.push(format!(
                    "{at}: outcome {:?} is not one of decisions.outcomes {:?}",
                    r.outcome, self.outcomes
                ));
            }
            if let Err(e) = crate::expr::check_syntax(&r.when) {
                problems.push(format!("{at}: condition {:?} is not SQL: {e}", r.when));
            }
        }
        let mut lists = HashSet::new();
        for (i, l) in self.lists.iter().enumerate() {
            if l.name.is_empty() {
                problems.push(format!("decisions.lists[{i}] has no name"));
            } else if !lists.insert(l.name.as_str()) {
                problems.push(format!("list {:?} is declared twice", l.name));
            }
            if let Some(file) = &l.file {
                problems.push(format!(
                    "list {:?}: its file {} was not read",
                    l.name,
                    file.display()
                ));
            }
        }
        problems
    }

    /// The lists as sets of values.
    fn sets(&self) -> std::collections::HashMap<String, HashSet<String>> {
        self.lists
            .iter()
            .map(|l| (l.name.clone(), l.values.iter().cloned().collect()))
            .collect()
    }

    /// [`Self::problems`] and those of planning each condition over `schema` (the scored
    /// events: a field it lacks, an unknown function, a condition that is not true or false).
    pub fn validate(&self, schema: &SchemaRef) -> Vec<String> {
        let mut problems = self.problems();
        let functions = [crate::lists::Lists::new(self.sets()).function()];
        for r in &self.rules {
            match crate::expr::plan_with(&r.when, schema, &functions) {
                Ok(e) => match e.data_type(schema) {
                    Ok(DataType::Boolean) => {}
                    Ok(other) => problems.push(format!(
                        "rule {:?}: condition {:?} is {other}, not a condition (true or false)",
                        r.name, r.when
                    )),
                    Err(e) => problems.push(format!("rule {:?}: {e}", r.name)),
                },
                Err(e) => problems.push(format!("rule {:?}: {e}", r.name)),
            }
        }
        problems
    }

    /// The rules' version: the first 12 hex digits of the SHA-256 of their canonical text
    /// (outcomes, then each rule's name, condition, outcome and shadow flag, in order), so two
    /// configs with the same rules have the same version whatever their layout or comments.
    pub fn version(&self) -> String {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        for o in &self.outcomes {
            hash.update(o.as_bytes());
            hash.update([0x1f]);
        }
        hash.update([0x1e]);
        for r in &self.rules {
            for part in [&r.name, &r.when, &r.outcome] {
                hash.update(part.as_bytes());
                hash.update([0x1f]);
            }
            hash.update([u8::from(r.shadow), u8::from(r.overrides), 0x1e]);
        }
        // The lists' contents decide too: a version names exactly what decided.
        let mut lists: Vec<(&str, Vec<&str>)> = self
            .lists
            .iter()
            .map(|l| {
                let mut values: Vec<&str> = l.values.iter().map(String::as_str).collect();
                values.sort_unstable();
                values.dedup();
                (l.name.as_str(), values)
            })
            .collect();
        lists.sort();
        for (name, values) in lists {
            hash.update(name.as_bytes());
            hash.update([0x1d]);
            for v in values {
                hash.update(v.as_bytes());
                hash.update([0x1f]);
            }
            hash.update([0x1e]);
        }
        hash.finalize()
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The decider of these rules; `Err` with every problem of [`Self::problems`].
    pub fn build(&self) -> Result<Decider, Vec<String>> {
        let problems = self.problems();
        if !problems.is_empty() {
            return Err(problems);
        }
        let rank = |o: &str| self.outcomes.iter().position(|x| x == o).unwrap_or(0);
        let lists = crate::lists::Lists::new(self.sets());
        let function = lists.function();
        Ok(Decider {
            outcomes: self.outcomes.clone(),
            rules: self
                .rules
                .iter()
                .map(|r| Rule {
                    name: r.name.clone(),
                    when: Expression::with_functions(&r.when, vec![function.clone()]),
                    rank: rank(&r.outcome),
                    shadow: r.shadow,
                    overrides: r.overrides,
                })
                .collect(),
            version: self.version(),
            lists,
        })
    }
}

#[derive(Debug)]
struct Rule {
    name: String,
    when: Expression,
    rank: usize,
    shadow: bool,
    overrides: bool,
}

/// Decides scored batches by the rules it was built from.
#[derive(Debug)]
pub struct Decider {
    outcomes: Vec<String>,
    rules: Vec<Rule>,
    version: String,
    lists: crate::lists::Lists,
}

/// The decisions of one batch, row by row.
#[derive(Debug, Clone, PartialEq)]
pub struct Decisions {
    /// Each row's outcome, as its index in the declared outcomes.
    pub outcome: Vec<usize>,
    /// Each row's matching rules (shadow rules too), as their indices in the rules, in order.
    pub matched: Vec<Vec<usize>>,
}

impl Decider {
    /// The outcomes, least severe first.
    pub fn outcomes(&self) -> &[String] {
        &self.outcomes
    }

    /// The rules' names, in order.
    pub fn rule_names(&self) -> Vec<&str> {
        self.rules.iter().map(|r| r.name.as_str()).collect()
    }

    /// Whether rule `i` is a shadow rule.
    pub fn is_shadow(&self, i: usize) -> bool {
        self.rules.get(i).is_some_and(|r| r.shadow)
    }

    /// The reference lists the rules read (replace them to update every rule at once).
    pub fn lists(&self) -> &crate::lists::Lists {
        &self.lists
    }

    /// The version of the rules ([`DecisionsConfig::version`]).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Every row of `batch` decided. An error evaluating any rule fails the whole batch: a
    /// decision is never made without every rule.
    pub fn decide(&mut self, batch: &RecordBatch) -> Result<Decisions, ExprError> {
        let rows = batch.num_rows();
        let mut outcome = vec![0; rows];
        // An overriding rule's outcome, where one matched (the most severe of them).
        let mut forced: Vec<Option<usize>> = vec![None; rows];
        let mut matched = vec![Vec::new(); rows];
        for (i, rule) in self.rules.iter_mut().enumerate() {
            let hits = rule.when.matches(batch)?;
            for row in hits.values().set_indices() {
                matched[row].push(i);
                match (rule.shadow, rule.overrides) {
                    (true, _) => {}
                    (false, false) => outcome[row] = outcome[row].max(rule.rank),
                    (false, true) => {
                        forced[row] = Some(forced[row].map_or(rule.rank, |f| f.max(rule.rank)));
                    }
                }
            }
        }
        for (o, f) in outcome.iter_mut().zip(forced) {
            if let Some(f) = f {
                *o = f;
            }
        }
        Ok(Decisions { outcome, matched })
    }

    /// `decisions` as two columns: each row's outcome and its matching rules, each as
    /// `{rule, outcome, shadow}` ([`riskpipe_schemas::rule_fields`]).
    pub fn columns(&self, decisions: &Decisions) -> (ArrayRef, ArrayRef) {
        let outcome: StringArray = decisions
            .outcome
            .iter()
            .map(|&o| Some(self.outcomes[o].as_str()))
            .collect();
        let fields = riskpipe_schemas::rule_fields();
        let mut rules = ListBuilder::new(StructBuilder::new(
            fields.clone(),
            vec![
                Box::new(StringBuilder::new()),
                Box::new(StringBuilder::new()),
                Box::new(BooleanBuilder::new()),
            ],
        ))
        .with_field(Arc::new(Field::new_struct("item", fields, false)));
        for row in &decisions.matched {
            let items = rules.values();
            for &i in row {
                let rule = &self.rules[i];
                if let Some(b) = items.field_builder::<StringBuilder>(0) {
                    b.append_value(&rule.name);
                }
                if let Some(b) = items.field_builder::<StringBuilder>(1) {
                    b.append_value(&self.outcomes[rule.rank]);
                }
                if let Some(b) = items.field_builder::<BooleanBuilder>(2) {
                    b.append_value(rule.shadow);
                }
                items.append(true);
            }
            rules.append(true);
        }
        (Arc::new(outcome), Arc::new(rules.finish()))
    }
}

/// The labelled events a backtest decided: per row whether it was a fraud, its amount, its
/// entity (card, customer) and its event time (ns), aligned with a [`Decisions`].
#[derive(Debug, Clone, Copy)]
pub struct Labelled<'a> {
    /// Whether each event was a fraud.
    pub fraud: &'a [bool],
    /// Each event's amount (the declared amount field).
    pub amount: &'a [f64],
    /// Each event's entity.
    pub entity: &'a [&'a str],
    /// Each event's time, ns.
    pub time_ns: &'a [i64],
}

impl Labelled<'_> {
    /// Days of event time the events span (at least one).
    fn days(&self) -> f64 {
        let (lo, hi) = (
            self.time_ns.iter().min().copied().unwrap_or(0),
            self.time_ns.iter().max().copied().unwrap_or(0),
        );
        ((hi - lo) as f64 / 86_400e9).max(1.0)
    }
}

/// What one rule did over a backtest's events.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RuleReport {
    /// The rule.
    pub name: String,
    /// Whether it is a shadow rule (it decided nothing).
    pub shadow: bool,
    /// Events it matched.
    pub hits: u64,
    /// Hits per day of event time.
    pub hits_per_day: f64,
    /// Frauds among its hits, over its hits (0 without hits).
    pub precision: f64,
    /// Frauds it hit, over all frauds (0 without frauds).
    pub recall: f64,
    /// The amount of the frauds it hit.
    pub fraud_amount: f64,
    /// For each outcome above the default: of the events decided so, the share it matched.
    pub share: Vec<(String, f64)>,
}

/// Per rule, in the rules' order, what it did over `labelled` as `decisions` decided it; and
/// the overlap: `overlap[i][j]` events matched by both rule `i` and rule `j` (`[i][i]` its hits).
pub fn rule_reports(
    decider: &Decider,
    decisions: &Decisions,
    labelled: &Labelled<'_>,
) -> (Vec<RuleReport>, Vec<Vec<u64>>) {
    let rules = decider.rules.len();
    let days = labelled.days();
    let frauds = labelled.fraud.iter().filter(|f| **f).count() as f64;
    let mut decided = vec![0u64; decider.outcomes.len()];
    for &o in &decisions.outcome {
        decided[o] += 1;
    }
    let mut overlap = vec![vec![0u64; rules]; rules];
    let mut hits = vec![0u64; rules];
    let mut fraud_hits = vec![0u64; rules];
    let mut fraud_amount = vec![0f64; rules];
    let mut by_outcome = vec![vec![0u64; decider.outcomes.len()]; rules];
    for (row, matched) in decisions.matched.iter().enumerate() {
        for &i in matched {
            hits[i] += 1;
            by_outcome[i][decisions.outcome[row]] += 1;
            if labelled.fraud[row] {
                fraud_hits[i] += 1;
                fraud_amount[i] += labelled.amount[row];
            }
            for &j in matched {
                overlap[i][j] += 1;
            }
        }
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let reports = (0..rules)
        .map(|i| RuleReport {
            name: decider.rules[i].name.clone(),
            shadow: decider.rules[i].shadow,
            hits: hits[i],
            hits_per_day: hits[i] as f64 / days,
            precision: ratio(fraud_hits[i] as f64, hits[i] as f64),
            recall: ratio(fraud_hits[i] as f64, frauds),
            fraud_amount: fraud_amount[i],
            share: (1..decider.outcomes.len())
                .map(|o| {
                    (
                        decider.outcomes[o].clone(),
                        ratio(by_outcome[i][o] as f64, decided[o] as f64),
                    )
                })
                .collect(),
        })
        .collect();
    (reports, overlap)
}

/// How a candidate set of rules decides the same events against the current set.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DecisionDiff {
    /// Events whose decision changes, by (current outcome, candidate outcome).
    pub changed: std::collections::BTreeMap<(String, String), u64>,
    /// Frauds decided above the default outcome: current, candidate.
    pub frauds_caught: (u64, u64),
    /// Their amount: current, candidate.
    pub fraud_amount_caught: (f64, f64),
    /// For each outcome above the default, the distinct entities decided so at least once:
    /// current, candidate.
    pub entities: Vec<(String, u64, u64)>,
}

/// The difference between `current` and `candidate` decisions of the same `labelled` events.
/// Both deciders must declare the same outcomes (a candidate that renames them is compared by
/// name: an outcome the current rules lack counts as the default there).
pub fn diff(
    current: (&Decider, &Decisions),
    candidate: (&Decider, &Decisions),
    labelled: &Labelled<'_>,
) -> DecisionDiff {
    let name = |d: &Decider, o: usize| d.outcomes[o].clone();
    let mut out = DecisionDiff::default();
    let mut entities: Vec<(HashSet<&str>, HashSet<&str>)> =
        vec![Default::default(); current.0.outcomes.len()];
    for row in 0..labelled.fraud.len() {
        let (a, b) = (current.1.outcome[row], candidate.1.outcome[row]);
        let (a_name, b_name) = (name(current.0, a), name(candidate.0, b));
        if a_name != b_name {
            *out.changed.entry((a_name, b_name.clone())).or_default() += 1;
        }
        if labelled.fraud[row] {
            if a > 0 {
                out.frauds_caught.0 += 1;
                out.fraud_amount_caught.0 += labelled.amount[row];
            }
            if b > 0 {
                out.frauds_caught.1 += 1;
                out.fraud_amount_caught.1 += labelled.amount[row];
            }
        }
        if a > 0 {
            entities[a].0.insert(labelled.entity[row]);
        }
        if let Some(o) = current.0.outcomes.iter().position(|x| *x == b_name)
            && o > 0
        {
            entities[o].1.insert(labelled.entity[row]);
        }
    }
    out.entities = entities
        .iter()
        .enumerate()
        .skip(1)
        .map(|(o, (a, b))| {
            (
                current.0.outcomes[o].clone(),
                a.len() as u64,
                b.len() as u64,
            )
        })
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, AsArray, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn config(text: &str) -> DecisionsConfig {
        toml::from_str(text).expect("decisions config")
    }

    const RULES: &str = r#"
outcomes = ["allow", "review", "block"]

[[rules]]
name = "large"
when = "amount > 500"
outcome = "block"

[[rules]]
name = "risky"
when = "\"SCORE\" >= 0.8 OR country = 'XX'"
outcome = "review"

[[rules]]
name = "night_trial"
when = "amount > 100"
outcome = "block"
shadow = true
"#;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("amount", DataType::Float64, true),
            Field::new("SCORE", DataType::Float64, false),
            Field::new("country", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float64Array::from(vec![
                    Some(10.0),
                    Some(600.0),
                    Some(150.0),
                    None,
                    Some(700.0),
                ])),
                Arc::new(Float64Array::from(vec![0.1, 0.1, 0.9, 0.95, 0.99])),
                Arc::new(StringArray::from(vec![
                    Some("FR"),
                    Some("FR"),
                    None,
                    Some("FR"),
                    Some("XX"),
                ])),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn the_most_severe_matching_outcome_decides_and_every_match_is_reported() {
        let mut decider = config(RULES).build().expect("rules");
        let d = decider.decide(&batch()).expect("decide");
        // Row 0 matches nothing: the default. Row 1: large (block) and the shadow rule. Row 2:
        // risky (review) and the shadow rule, which does not decide. Row 3: a NULL amount
        // matches neither amount rule; risky by its score. Row 4: all three; block wins.
        assert_eq!(d.outcome, vec![0, 2, 1, 1, 2]);
        assert_eq!(
            d.matched,
            vec![vec![], vec![0, 2], vec![1, 2], vec![1], vec![0, 1, 2]]
        );
        let (outcome, rules) = decider.columns(&d);
        let outcome = outcome.as_string::<i32>();
        assert_eq!(
            (0..5).map(|i| outcome.value(i)).collect::<Vec<_>>(),
            vec!["allow", "block", "review", "review", "block"]
        );
        let rules = rules.as_list::<i32>();
        let matched = rules.value(4);
        let names = matched.as_struct().column(0).as_string::<i32>();
        assert_eq!(
            (0..names.len()).map(|i| names.value(i)).collect::<Vec<_>>(),
            vec!["large", "risky", "night_trial"]
        );
        assert!(decider.is_shadow(2) && !decider.is_shadow(0));
    }

    #[test]
    fn a_shadow_rule_alone_never_decides() {
        let mut decider = config(
            r#"
outcomes = ["allow", "block"]
[[rules]]
name = "trial"
when = "amount > 0"
outcome = "block"
shadow = true
"#,
        )
        .build()
        .expect("rules");
        let d = decider.decide(&batch()).expect("decide");
        assert_eq!(d.outcome, vec![0; 5]);
        assert_eq!(d.matched[1], vec![0]);
        assert!(d.matched[3].is_empty(), "NULL does not match");
    }

    #[test]
    fn every_problem_of_the_rules_is_listed_at_once() {
        let c = config(
            r#"
outcomes = ["allow", "block", "allow"]
[[rules]]
name = "a"
when = "amount >"
outcome = "deny"
[[rules]]
name = "a"
when = "nope > 1"
outcome = "block"
[[rules]]
name = ""
when = "amount + 1"
outcome = "block"
"#,
        );
        let problems = c.validate(&batch().schema());
        let text = problems.join("\n");
        for needle in [
            "\"allow\" twice",
            "outcome \"deny\" is not one of",
            "is not SQL",
            "rule \"a\" is named twice",
            "decisions.rules[2] has no name",
            "nope",
            "not a condition",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
        assert!(c.build().is_err());
        let empty = config("outcomes = []");
        assert!(empty.problems()[0].contains("outcomes is empty"));
    }

    #[test]
    fn the_version_follows_the_rules_not_their_layout() {
        let a = config(RULES);
        let reformatted = config(&RULES.replace("\n\n", "\n# a comment\n"));
        assert_eq!(a.version(), reformatted.version());
        assert_eq!(a.version().len(), 12);
        let mut changed = a.clone();
        changed.rules[0].when = "amount > 501".into();
        assert_ne!(a.version(), changed.version());
        let mut shadowed = a.clone();
        shadowed.rules[0].shadow = true;
        assert_ne!(a.version(), shadowed.version());
    }

    #[test]
    fn an_evaluation_error_fails_the_batch_rather_than_allowing() {
        let mut decider = config(
            r#"
outcomes = ["allow", "block"]
[[rules]]
name = "ratio"
when = "n / d > 1"
outcome = "block"
"#,
        )
        .build()
        .expect("rules");
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("d", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![4, 1])),
                Arc::new(Int64Array::from(vec![2, 0])),
            ],
        )
        .expect("batch");
        assert!(
            decider.decide(&batch).is_err(),
            "division by zero decides nothing"
        );
    }

    #[test]
    fn rule_reports_and_the_diff_equal_a_count_by_hand() {
        let mut decider = config(RULES).build().expect("rules");
        let d = decider.decide(&batch()).expect("decide");
        // Rows: 0 allow, 1 block (large + trial), 2 review (risky + trial), 3 review (risky),
        // 4 block (all three). Frauds: rows 1 and 4; amounts 600 and 700; two days of time.
        let labelled = Labelled {
            fraud: &[false, true, false, false, true],
            amount: &[10.0, 600.0, 150.0, 0.0, 700.0],
            entity: &["a", "b", "a", "c", "b"],
            time_ns: &[0, 86_400_000_000_000, 2 * 86_400_000_000_000, 0, 0],
        };
        let (reports, overlap) = rule_reports(&decider, &d, &labelled);
        let large = &reports[0];
        assert_eq!((large.hits, large.hits_per_day), (2, 1.0));
        assert_eq!((large.precision, large.recall), (1.0, 1.0));
        assert_eq!(large.fraud_amount, 1300.0);
        // Reviews: rows 2, 3 (none large); blocks: rows 1, 4 (both large).
        assert_eq!(
            large.share,
            vec![("review".to_string(), 0.0), ("block".to_string(), 1.0)]
        );
        let risky = &reports[1];
        assert_eq!(risky.hits, 3);
        assert_eq!((risky.precision, risky.recall), (1.0 / 3.0, 0.5));
        assert_eq!(
            risky.share,
            vec![("review".to_string(), 1.0), ("block".to_string(), 0.5)]
        );
        assert!(reports[2].shadow);
        assert_eq!(overlap[0], vec![2, 1, 2]);
        assert_eq!(overlap[1], vec![1, 3, 2]);
        assert_eq!(overlap[2][2], 3);

        // A candidate without the large-amount rule: rows 1 (trial is shadow) and 4 change.
        let mut candidate_rules = config(RULES);
        candidate_rules.rules.remove(0);
        let mut candidate = candidate_rules.build().expect("candidate");
        let c = candidate.decide(&batch()).expect("decide");
        let diff = diff((&decider, &d), (&candidate, &c), &labelled);
        let changed: Vec<_> = diff.changed.iter().collect();
        assert_eq!(
            changed,
            vec![
                (&("block".to_string(), "allow".to_string()), &1),
                (&("block".to_string(), "review".to_string()), &1)
            ]
        );
        assert_eq!(diff.frauds_caught, (2, 1));
        assert_eq!(diff.fraud_amount_caught, (1300.0, 700.0));
        // Reviewed: a, c now; a, b, c then. Blocked: b now; nobody then.
        assert_eq!(
            diff.entities,
            vec![("review".to_string(), 2, 3), ("block".to_string(), 1, 0)]
        );
    }

    /// Block and allow lists: `in_list` tests membership (an integer card as its digits; a
    /// NULL card matches no rule), an overriding allow rule wins over a block and a review,
    /// a list that is not declared is refused when planned, and replacing the lists changes
    /// the next batch's decisions; the lists' contents change the version.
    #[test]
    fn lists_decide_membership_and_an_overriding_allow_wins() {
        let text = r#"
outcomes = ["allow", "review", "block"]

[[lists]]
name = "blocked_cards"
values = ["7", "9"]

[[lists]]
name = "trusted_cards"
values = ["9"]

[[rules]]
name = "blocked"
when = "in_list('blocked_cards', card)"
outcome = "block"

[[rules]]
name = "trusted"
when = "in_list('trusted_cards', card)"
outcome = "allow"
overrides = true

[[rules]]
name = "large"
when = "amount > 100"
outcome = "review"
"#;
        let rules = config(text);
        let schema = Arc::new(Schema::new(vec![
            Field::new("card", DataType::Int64, true),
            Field::new("amount", DataType::Float64, false),
        ]));
        assert_eq!(rules.validate(&schema), Vec::<String>::new());
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(7), Some(9), Some(3), None])),
                Arc::new(Float64Array::from(vec![10.0, 500.0, 500.0, 500.0])),
            ],
        )
        .expect("batch");
        let mut decider = rules.build().expect("decider");
        let d = decider.decide(&batch).expect("decide");
        assert_eq!(d.outcome, vec![2, 0, 1, 1]);
        assert_eq!(d.matched, vec![vec![0], vec![0, 1, 2], vec![2], vec![2]]);

        decider.lists().replace(
            [
                ("blocked_cards".to_string(), ["3".to_string()].into()),
                ("trusted_cards".to_string(), HashSet::new()),
            ]
            .into(),
        );
        let d = decider.decide(&batch).expect("decide");
        assert_eq!(d.outcome, vec![0, 1, 2, 1]);

        let unknown = config(&text.replace("in_list('trusted_cards'", "in_list('nope'"));
        let problems = unknown.validate(&schema).join("\n");
        assert!(problems.contains("no list \"nope\""), "{problems}");
        let other = config(&text.replace("\"7\", \"9\"", "\"7\""));
        assert_ne!(other.version(), rules.version());
        let reordered = config(&text.replace("\"7\", \"9\"", "\"9\", \"7\""));
        assert_eq!(reordered.version(), rules.version());
    }
}
