//! The fraud job's decisions: `[decisions]` (rules inline or in a rules file) over the scored
//! rows, or, without it, the one shipped rule `[alerts] threshold` stands for; which decisions
//! are alerts; the decision columns of the scored rows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, SchemaRef};
use riskpipe_operators::decisions::{Decider, Decisions, DecisionsConfig, ListConfig, RuleConfig};
use riskpipe_schemas::score;
use serde::Deserialize;

use crate::jobs::Repeated;
use crate::{PipelineError, Result};

/// `[decisions]`: the rules that turn a scored event into a decision, and which decisions are
/// alerts. Without it, an event is an alert when its score reaches `[alerts] threshold` (the
/// shipped rule `threshold`: `ALERT` → `review`) and no decision records are published.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionsSection {
    /// The outcomes in order of severity, least severe first (e.g. `["allow", "review",
    /// "block"]`); the first is the decision of an event no deciding rule matches. Not with
    /// `file`.
    #[serde(default)]
    pub outcomes: Vec<String>,
    /// The rules (`[[decisions.rules]]`: `name`, `when`, `outcome`, `shadow`): an event's
    /// decision is the most severe outcome of the non-shadow rules it matches. Not with `file`.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Reference lists (`[[decisions.lists]]`: `name`, `file` and/or `values`) the rules test
    /// membership in with `in_list('name', value)`. Not with `file`.
    #[serde(default)]
    pub lists: Vec<ListConfig>,
    /// A rules file (TOML: `outcomes` and `[[rules]]`), relative to this config: what the
    /// decisions use instead of `outcomes` and `rules` here.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// The outcomes published as alerts too (default: every outcome but the first).
    #[serde(default)]
    pub alert: Option<Vec<String>>,
    /// A file every change of the rules is appended to, one JSON line each: when it took
    /// effect, what asked for it (`request`: SIGHUP or `POST /admin/reload`; `file`: a watched
    /// file changed), the version before and after.
    #[serde(default)]
    pub changes: Option<PathBuf>,
    /// The alert `RiskpipeRuleHitRateJump` fires for a rule whose hit rate over the last hour
    /// exceeds this many times its rate over the last day (exported per rule as
    /// `riskpipe_rule_jump_factor`).
    #[serde(default = "default_jump_factor")]
    pub jump_factor: f64,
}

fn default_jump_factor() -> f64 {
    3.0
}

impl Default for DecisionsSection {
    fn default() -> Self {
        Self {
            outcomes: Vec::new(),
            rules: Vec::new(),
            lists: Vec::new(),
            file: None,
            alert: None,
            changes: None,
            jump_factor: default_jump_factor(),
        }
    }
}

impl DecisionsSection {
    /// The rules this section declares (read from `file`, relative to `base_dir`, where
    /// given); every problem of reading them at once.
    /// Every list's file is read (relative to the file that declares it).
    pub fn rules(&self, base_dir: &Path) -> std::result::Result<DecisionsConfig, Vec<String>> {
        let Some(file) = &self.file else {
            return read_lists(
                DecisionsConfig {
                    outcomes: self.outcomes.clone(),
                    rules: self.rules.clone(),
                    lists: self.lists.clone(),
                },
                base_dir,
            );
        };
        let mut problems = Vec::new();
        if !self.outcomes.is_empty() || !self.rules.is_empty() || !self.lists.is_empty() {
            problems.push(
                "decisions: outcomes, rules and lists come from decisions.file or from [decisions], not both"
                    .to_string(),
            );
        }
        let path = base_dir.join(file);
        let read = std::fs::read_to_string(&path)
            .map_err(|e| vec![format!("decisions.file {}: {e}", path.display())])
            .and_then(|text| {
                toml::from_str::<DecisionsConfig>(&text)
                    .map_err(|e| vec![format!("decisions.file {}: {e}", path.display())])
            })
            .and_then(|rules| read_lists(rules, path.parent().unwrap_or(base_dir)));
        match read {
            Ok(rules) if problems.is_empty() => Ok(rules),
            Ok(_) => Err(problems),
            Err(e) => {
                problems.extend(e);
                Err(problems)
            }
        }
    }

    /// The files the rules come from (the rules file, the lists' files): a reload watches them.
    pub fn files(&self, base_dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let (lists, dir) = match &self.file {
            Some(f) => {
                let path = base_dir.join(f);
                let lists = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| toml::from_str::<DecisionsConfig>(&t).ok())
                    .map(|r| r.lists)
                    .unwrap_or_default();
                let dir = path.parent().unwrap_or(base_dir).to_path_buf();
                files.push(path);
                (lists, dir)
            }
            None => (self.lists.clone(), base_dir.to_path_buf()),
        };
        files.extend(
            lists
                .iter()
                .filter_map(|l| l.file.as_ref())
                .map(|f| dir.join(f)),
        );
        files
    }

    /// Every problem of the section against the scored rows' `schema`, at once.
    pub fn problems(&self, base_dir: &Path, schema: &SchemaRef) -> Vec<String> {
        let rules = match self.rules(base_dir) {
            Ok(r) => r,
            Err(p) => return p,
        };
        let mut p: Vec<String> = rules
            .validate(schema)
            .into_iter()
            .map(|e| format!("decisions: {e}"))
            .collect();
        if !(self.jump_factor.is_finite() && self.jump_factor > 1.0) {
            p.push(format!(
                "decisions.jump_factor must be a number over 1, not {}",
                self.jump_factor
            ));
        }
        for o in self.alert.iter().flatten() {
            if !rules.outcomes.contains(o) {
                p.push(format!(
                    "decisions.alert names {o:?}, which is not among the outcomes {:?}",
                    rules.outcomes
                ));
            }
        }
        p
    }
}

/// `rules` with each list's file read into its values (relative to `dir`): one value per line,
/// blank lines and lines starting with `#` aside.
fn read_lists(
    mut rules: DecisionsConfig,
    dir: &Path,
) -> std::result::Result<DecisionsConfig, Vec<String>> {
    let mut problems = Vec::new();
    for list in &mut rules.lists {
        let Some(file) = list.file.take() else {
            continue;
        };
        let path = dir.join(&file);
        match std::fs::read_to_string(&path) {
            Ok(text) => list.values.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            ),
            Err(e) => problems.push(format!("list {:?}: {}: {e}", list.name, path.display())),
        }
    }
    match problems.is_empty() {
        true => Ok(rules),
        false => Err(problems),
    }
}

/// The rules `[alerts] threshold` stands for without `[decisions]`: `threshold` (the model's
/// `ALERT` flag, its score at or over the threshold) decides `review`, which is an alert.
pub(super) fn shipped() -> DecisionsConfig {
    DecisionsConfig {
        outcomes: vec!["allow".into(), "review".into()],
        rules: vec![RuleConfig {
            name: "threshold".into(),
            when: score::ALERT.into(),
            outcome: "review".into(),
            shadow: false,
            overrides: false,
        }],
        lists: Vec::new(),
    }
}

/// The scored rows' columns a rule may read besides the events' and the features': the
/// model's score and its alert flag.
pub(super) fn scored_fields() -> [Field; 2] {
    [
        Field::new(score::SCORE, DataType::Float32, false),
        Field::new(score::ALERT, DataType::Boolean, false),
    ]
}

/// The decisions of the score stage.
#[derive(Debug)]
pub(super) struct Decide {
    decider: Decider,
    /// Per outcome, whether it is an alert.
    alert: Vec<bool>,
    /// The outcomes `[decisions] alert` names (`None`: all but the first).
    alert_names: Option<Vec<String>>,
    jump_factor: f64,
    /// Where rule changes are logged (`[decisions] changes`), resolved.
    changes: Option<PathBuf>,
    /// `[decisions]` declared: decision columns and records are published.
    pub(super) declared: bool,
    pub(super) version: Repeated,
}

/// Per outcome, whether it is an alert: those `names` lists, or every outcome but the first.
fn alert_of(names: Option<&[String]>, outcomes: &[String]) -> Vec<bool> {
    match names {
        Some(names) => outcomes.iter().map(|o| names.contains(o)).collect(),
        None => (0..outcomes.len()).map(|i| i > 0).collect(),
    }
}

/// One batch decided.
pub(super) struct Decided {
    pub(super) decisions: Decisions,
    /// Rows that are alerts.
    pub(super) alerted: Vec<usize>,
    /// Rows explained: every row not of the default outcome, and every alert.
    pub(super) explained: Vec<usize>,
}

impl Decide {
    /// The decisions of `section` (`None`: the shipped threshold rule).
    pub(super) fn new(section: Option<&DecisionsSection>, base_dir: &Path) -> Result<Self> {
        let (rules, declared) = match section {
            Some(s) => (s.rules(base_dir).map_err(PipelineError::Config)?, true),
            None => (shipped(), false),
        };
        let decider = rules.build().map_err(|problems| {
            PipelineError::Config(
                problems
                    .into_iter()
                    .map(|e| format!("decisions: {e}"))
                    .collect(),
            )
        })?;
        let alert_names = section.and_then(|s| s.alert.clone());
        let jump_factor = section.map_or_else(default_jump_factor, |s| s.jump_factor);
        for name in decider.rule_names() {
            crate::events::rule_jump_factor(name, jump_factor);
        }
        let version = Repeated::new(decider.version());
        Ok(Self {
            alert: alert_of(alert_names.as_deref(), decider.outcomes()),
            decider,
            alert_names,
            jump_factor,
            changes: section
                .and_then(|s| s.changes.as_ref())
                .map(|c| base_dir.join(c)),
            declared,
            version,
        })
    }

    /// The version of the rules deciding.
    pub(super) fn version(&self) -> &str {
        self.decider.version()
    }

    /// Decides with `rules` (checked by the reloader, asked for by `trigger`) from the next
    /// batch on; the change is logged, and appended to `[decisions] changes`.
    pub(super) fn swap(&mut self, rules: &DecisionsConfig, trigger: &str) {
        let decider = match rules.build() {
            Ok(d) => d,
            Err(problems) => {
                crate::events::rules_reload("refused");
                tracing::error!(
                    "decision rules {} refused, {} keeps deciding: {problems:?}",
                    rules.version(),
                    self.decider.version()
                );
                return;
            }
        };
        let before = self.decider.version().to_string();
        for name in decider.rule_names() {
            crate::events::rule_jump_factor(name, self.jump_factor);
        }
        self.alert = alert_of(self.alert_names.as_deref(), decider.outcomes());
        self.version = Repeated::new(decider.version());
        self.decider = decider;
        crate::events::rules_reload("swapped");
        let after = self.decider.version();
        tracing::info!(
            trigger,
            "decision rules swapped: {before} -> {after} from this batch on"
        );
        if let Some(path) = &self.changes {
            let line = serde_json::json!({
                "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "trigger": trigger,
                "from": before,
                "to": after,
            });
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| {
                    use std::io::Write;
                    writeln!(f, "{line}")
                });
            if let Err(e) = appended {
                tracing::warn!("decisions.changes {}: {e}", path.display());
            }
        }
    }

    /// Decides every row of `scored`; a rule that fails to evaluate stops the pipeline (the
    /// batch uncommitted): a decision is never made without every rule.
    pub(super) fn decide(&mut self, scored: &RecordBatch) -> Result<Decided> {
        let decisions = self
            .decider
            .decide(scored)
            .map_err(|e| PipelineError::Bug(format!("a decision rule failed to evaluate: {e}")))?;
        let alerted = (0..decisions.outcome.len())
            .filter(|&i| self.alert[decisions.outcome[i]])
            .collect();
        let explained = (0..decisions.outcome.len())
            .filter(|&i| decisions.outcome[i] > 0 || self.alert[decisions.outcome[i]])
            .collect();
        self.count(&decisions);
        Ok(Decided {
            decisions,
            alerted,
            explained,
        })
    }

    fn count(&self, decisions: &Decisions) {
        let names = self.decider.rule_names();
        let mut hits = vec![0u64; names.len()];
        for row in &decisions.matched {
            for &r in row {
                hits[r] += 1;
            }
        }
        for (i, (name, n)) in names.iter().zip(hits).enumerate() {
            crate::events::rule_hits(name, self.decider.is_shadow(i), n);
        }
        let mut by_outcome = vec![0u64; self.decider.outcomes().len()];
        for &o in &decisions.outcome {
            by_outcome[o] += 1;
        }
        for (outcome, n) in self.decider.outcomes().iter().zip(by_outcome) {
            crate::events::decisions(outcome, n);
        }
    }

    /// `DECISION` and `RULES` (`{rule, outcome, shadow}` per matching rule) of `decided`.
    pub(super) fn columns(&self, decided: &Decisions) -> (ArrayRef, ArrayRef) {
        self.decider.columns(decided)
    }
}

/// What the rules did over a backtest, and what a candidate would change: `rules.json`.
#[derive(Debug, serde::Serialize)]
pub struct RulesBacktest {
    /// The rules' version.
    pub version: String,
    /// Events decided.
    pub events: usize,
    /// Per rule: hits, hits per day, precision, recall, fraud amount, share of each outcome.
    pub rules: Vec<riskpipe_operators::decisions::RuleReport>,
    /// `overlap[i][j]`: events matched by rules `i` and `j` (`[i][i]`: its hits).
    pub overlap: Vec<Vec<u64>>,
    /// With a candidate rules file: its version and how its decisions differ.
    pub candidate: Option<CandidateDiff>,
}

/// A candidate's decisions against the current rules' over the same events and model.
#[derive(Debug, serde::Serialize)]
pub struct CandidateDiff {
    /// The candidate's version.
    pub version: String,
    /// `"from -> to"` → events whose decision changes so.
    pub changed: std::collections::BTreeMap<String, u64>,
    /// Frauds decided above the default: current, candidate.
    pub frauds_caught: (u64, u64),
    /// Their amount: current, candidate.
    pub fraud_amount_caught: (f64, f64),
    /// Per outcome above the default: distinct entities decided so, current and candidate.
    pub entities: Vec<(String, u64, u64)>,
}

/// The rules backtest over `scored` (the replay's scored rows, decided): per rule figures
/// against the labels, from the decisions the replay made (its `DECISION` and `RULES`); with
/// `candidate`, that rules file decided over the same rows and compared. Writes `rules.json`
/// and `rules.csv` into `out_dir`; returns the files.
pub(super) fn backtest(
    cfg: &super::FraudConfig,
    section: &DecisionsSection,
    base_dir: &Path,
    scored: &[RecordBatch],
    candidate: Option<&Path>,
    out_dir: &Path,
) -> Result<(RulesBacktest, Vec<PathBuf>)> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Float64Type, Int64Type, TimestampNanosecondType};
    use riskpipe_operators::columns;
    use riskpipe_operators::decisions::{Labelled, diff, rule_reports};
    let rules = section.rules(base_dir).map_err(PipelineError::Config)?;
    let decider = rules.build().map_err(PipelineError::Config)?;
    let names = decider.rule_names();
    let (mut fraud, mut amount, mut entity, mut time) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut decided = Decisions {
        outcome: Vec::new(),
        matched: Vec::new(),
    };
    let bug = |what: String| PipelineError::Bug(format!("a decided row: {what}"));
    for b in scored {
        let truth = arrow::compute::cast(columns::get(b, &cfg.truth_column())?, &DataType::Int64)?;
        fraud.extend(
            truth
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .map(|&f| f != 0),
        );
        match &cfg.events.amount {
            Some(a) => {
                let v = arrow::compute::cast(columns::get(b, a)?, &DataType::Float64)?;
                let v = v.as_primitive::<Float64Type>();
                // Money moved either way: a signed amount counts by its size.
                amount.extend(
                    (0..v.len()).map(|i| if v.is_null(i) { 0.0 } else { v.value(i).abs() }),
                );
            }
            None => amount.extend(std::iter::repeat_n(0.0, b.num_rows())),
        }
        let e = arrow::compute::cast(columns::get(b, cfg.entity_column())?, &DataType::Utf8)?;
        let e = e.as_string::<i32>();
        entity.extend((0..e.len()).map(|i| e.value(i).to_string()));
        time.extend_from_slice(
            columns::primitive::<TimestampNanosecondType>(b, &cfg.features.event_time)?.values(),
        );
        let outcome = columns::get(b, score::DECISION)?.as_string::<i32>();
        for o in outcome.iter() {
            let o = o.unwrap_or_default();
            let at = decider
                .outcomes()
                .iter()
                .position(|x| x == o)
                .ok_or_else(|| bug(format!("outcome {o:?} is not among the rules'")))?;
            decided.outcome.push(at);
        }
        let matched = columns::get(b, score::RULES)?.as_list::<i32>();
        for row in matched.iter() {
            let mut hits = Vec::new();
            if let Some(items) = row {
                let items = items.as_struct();
                let rule = items.column(0).as_string::<i32>();
                for r in rule.iter().flatten() {
                    hits.push(
                        names
                            .iter()
                            .position(|n| *n == r)
                            .ok_or_else(|| bug(format!("rule {r:?} is not among the rules'")))?,
                    );
                }
            }
            decided.matched.push(hits);
        }
    }
    let entities: Vec<&str> = entity.iter().map(String::as_str).collect();
    let labelled = Labelled {
        fraud: &fraud,
        amount: &amount,
        entity: &entities,
        time_ns: &time,
    };
    let (reports, overlap) = rule_reports(&decider, &decided, &labelled);
    let candidate = match candidate {
        Some(path) => {
            let rules = DecisionsSection {
                file: Some(path.to_path_buf()),
                ..DecisionsSection::default()
            }
            .rules(Path::new("."))
            .map_err(|problems| {
                PipelineError::Config(
                    problems
                        .into_iter()
                        .map(|e| format!("--rules-candidate: {e}"))
                        .collect(),
                )
            })?;
            let schema = scored
                .first()
                .map(RecordBatch::schema)
                .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
            let problems = rules.validate(&schema);
            if !problems.is_empty() {
                return Err(PipelineError::Config(
                    problems
                        .into_iter()
                        .map(|e| format!("--rules-candidate {}: {e}", path.display()))
                        .collect(),
                ));
            }
            let mut theirs = rules.build().map_err(PipelineError::Config)?;
            let mut decisions = Decisions {
                outcome: Vec::new(),
                matched: Vec::new(),
            };
            for b in scored {
                let d = theirs
                    .decide(b)
                    .map_err(|e| bug(format!("a candidate rule failed to evaluate: {e}")))?;
                decisions.outcome.extend(d.outcome);
                decisions.matched.extend(d.matched);
            }
            let d = diff((&decider, &decided), (&theirs, &decisions), &labelled);
            Some(CandidateDiff {
                version: theirs.version().to_string(),
                changed: d
                    .changed
                    .into_iter()
                    .map(|((a, b), n)| (format!("{a} -> {b}"), n))
                    .collect(),
                frauds_caught: d.frauds_caught,
                fraud_amount_caught: d.fraud_amount_caught,
                entities: d.entities,
            })
        }
        None => None,
    };
    let report = RulesBacktest {
        version: decider.version().to_string(),
        events: fraud.len(),
        rules: reports,
        overlap,
        candidate,
    };
    let json_path = out_dir.join("rules.json");
    let json = serde_json::to_vec_pretty(&report)
        .map_err(|e| PipelineError::Bug(format!("rules.json: {e}")))?;
    std::fs::write(&json_path, json).map_err(PipelineError::io("writing", &json_path))?;
    let csv_path = out_dir.join("rules.csv");
    let outcomes = &decider.outcomes()[1..];
    let mut csv = String::from("rule,shadow,hits,hits_per_day,precision,recall,fraud_amount");
    for o in outcomes {
        csv.push_str(&format!(",share_of_{o}"));
    }
    csv.push('\n');
    for r in &report.rules {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{}",
            r.name, r.shadow, r.hits, r.hits_per_day, r.precision, r.recall, r.fraud_amount
        ));
        for o in outcomes {
            let share = r.share.iter().find(|(n, _)| n == o).map_or(0.0, |s| s.1);
            csv.push_str(&format!(",{share}"));
        }
        csv.push('\n');
    }
    std::fs::write(&csv_path, csv).map_err(PipelineError::io("writing", &csv_path))?;
    let png_path = out_dir.join("rules.png");
    plot(&report, &png_path)?;
    Ok((report, vec![json_path, csv_path, png_path]))
}

/// `rules.png`: per rule, its hits split into frauds (red) and genuine events (grey); a shadow
/// rule's name says so.
fn plot(report: &RulesBacktest, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    crate::backtest::ensure_font();
    let plot_err = |e: &dyn std::fmt::Display| PipelineError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let rows = report.rules.len().max(1);
    let names: Vec<String> = report
        .rules
        .iter()
        .map(|r| match r.shadow {
            true => format!("{} (shadow)", r.name),
            false => r.name.clone(),
        })
        .collect();
    let most = report
        .rules
        .iter()
        .map(|r| r.hits)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let root = BitMapBackend::new(path, (1200, 120 + 36 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Hits per rule over {} events (rules {}): frauds red, genuine grey",
                report.events, report.version
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(260)
        .build_cartesian_2d(0f64..most * 1.05, -0.5f64..rows as f64 - 0.5)
        .map_err(|e| plot_err(&e))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows)
        .y_label_formatter(&|y| {
            names
                .get(y.round().max(0.0) as usize)
                .cloned()
                .unwrap_or_default()
        })
        .x_desc("events matched")
        .draw()
        .map_err(|e| plot_err(&e))?;
    let bars = report.rules.iter().enumerate().flat_map(|(i, r)| {
        let y = i as f64;
        let frauds = (r.precision * r.hits as f64).round();
        [
            Rectangle::new([(0.0, y - 0.35), (frauds, y + 0.35)], RED.mix(0.8).filled()),
            Rectangle::new(
                [(frauds, y - 0.35), (r.hits as f64, y + 0.35)],
                RGBColor(160, 160, 160).filled(),
            ),
        ]
    });
    chart.draw_series(bars).map_err(|e| plot_err(&e))?;
    root.present().map_err(|e| plot_err(&e))?;
    Ok(())
}
