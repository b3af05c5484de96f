//! Ensembles: several models scored on the same feature rows and combined in riskpipe (mean,
//! weighted mean or rank average), so a blend is configuration, not a hand-built ONNX file.
//!
//! A [`Model`] is what the score stages hold: one [`Scorer`], or several combined. Its input is
//! the union of the members' columns (in the order they first appear; a column two members read
//! as different numbers is read as the wider); each member reads its own columns of it. Every combination works row by row, in `f64`, members
//! in configuration order, so a score does not depend on how rows are cut into batches:
//!
//! - `mean`: `Σ sₘ / n`;
//! - `weighted_mean`: `Σ wₘ·sₘ / Σ wₘ`;
//! - `rank_average`: `Σ wₘ·Fₘ(sₘ) / Σ wₘ` (weights default to 1), `Fₘ` the member's score rank
//!   in a fixed reference ([`RankReference`]: 1,001 quantiles of its scores over a reference
//!   period, which `riskpipe backtest` writes), never the rank within a batch, which would
//!   differ between live micro-batches and a backtest.
//!
//! The result is rounded once to `f32`. One model alone is passed through untouched.

use std::path::{Path, PathBuf};

use arrow::array::{ArrayRef, RecordBatch};
use serde::{Deserialize, Serialize};

use crate::{InputColumn, Inputs, ModelConfig, ModelError, Result, Scorer};

/// How an ensemble combines its members' scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// The plain mean.
    #[default]
    Mean,
    /// The mean weighted by each member's `weight`.
    WeightedMean,
    /// The (weighted) mean of each member's rank in its reference score distribution.
    RankAverage,
}

impl Combine {
    /// Its name in the configuration and in model labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Combine::Mean => "mean",
            Combine::WeightedMean => "weighted_mean",
            Combine::RankAverage => "rank_average",
        }
    }
}

/// `[ensemble]`: how several `[[model]]` entries are combined.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleConfig {
    /// `mean` (default), `weighted_mean` or `rank_average`.
    #[serde(default)]
    pub combine: Combine,
    /// `rank_average`: the members' reference score quantiles (`ensemble_reference.json`, as
    /// `riskpipe backtest` writes it for any ensemble).
    #[serde(default)]
    pub reference: Option<PathBuf>,
}

impl EnsembleConfig {
    /// Every problem of the section with these members, without loading anything.
    pub fn problems(&self, members: &[ModelConfig]) -> Vec<String> {
        let mut p = Vec::new();
        if members.len() < 2 {
            p.push("[ensemble] combines several [[model]] entries; there is one".into());
        }
        for (i, m) in members.iter().enumerate() {
            match m.weight {
                Some(w) if !(w.is_finite() && w > 0.0) => p.push(format!(
                    "model {} ({}): weight must be a positive number, not {w}",
                    i + 1,
                    m.path.display()
                )),
                None if self.combine == Combine::WeightedMean => p.push(format!(
                    "model {} ({}): ensemble.combine = \"weighted_mean\" needs a weight",
                    i + 1,
                    m.path.display()
                )),
                Some(_) if self.combine == Combine::Mean => p.push(format!(
                    "model {} ({}): a weight has no effect with ensemble.combine = \"mean\" (use \"weighted_mean\")",
                    i + 1,
                    m.path.display()
                )),
                _ => {}
            }
        }
        match (&self.reference, self.combine) {
            (None, Combine::RankAverage) => p.push(
                "ensemble.combine = \"rank_average\" needs ensemble.reference: the members' score quantiles that `riskpipe backtest` writes as ensemble_reference.json for any ensemble (run it once with combine = \"mean\")".into(),
            ),
            (Some(r), Combine::RankAverage) if !r.is_file() => p.push(format!(
                "ensemble.reference {} does not exist",
                r.display()
            )),
            (Some(_), Combine::Mean | Combine::WeightedMean) => p.push(
                "ensemble.reference is only read by combine = \"rank_average\"".into(),
            ),
            _ => {}
        }
        p
    }
}

/// Points of each member's reference distribution: quantiles at `k / 1000`, `k = 0..=1000`.
pub const RANK_QUANTILES: usize = 1000;

/// One member's reference score distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberQuantiles {
    /// The member's label, `<file>@<version>`: a reference belongs to one version of a model.
    pub model: String,
    /// Scores at the quantiles `k / 1000`, increasing.
    pub quantiles: Vec<f32>,
}

/// The reference of a rank-average ensemble (`ensemble_reference.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankReference {
    /// What the reference is (e.g. the split's training days).
    pub period: String,
    /// Each member's quantiles.
    pub members: Vec<MemberQuantiles>,
}

impl MemberQuantiles {
    /// The quantiles of `scores` (non-finite ones left out); `None` when there is none.
    pub fn of(model: String, scores: &[f32]) -> Option<Self> {
        let mut sorted: Vec<f32> = scores.iter().copied().filter(|s| s.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f32::total_cmp);
        let last = sorted.len() - 1;
        let quantiles = (0..=RANK_QUANTILES)
            .map(|k| sorted[(k * last + RANK_QUANTILES / 2) / RANK_QUANTILES])
            .collect();
        Some(Self { model, quantiles })
    }

    /// The rank of `score` in this distribution, in `0..=1`: linear between the quantiles, the
    /// middle of a run of equal quantiles when `score` is one of them, 0 below the lowest and 1
    /// above the highest.
    pub fn rank(&self, score: f32) -> f64 {
        rank(&self.quantiles, score)
    }
}

fn rank(q: &[f32], s: f32) -> f64 {
    let Some(k) = q.len().checked_sub(1).filter(|&k| k > 0) else {
        return 0.5;
    };
    let k = k as f64;
    let lo = q.partition_point(|&v| v < s);
    let hi = q.partition_point(|&v| v <= s);
    if hi > lo {
        return (lo + hi - 1) as f64 / 2.0 / k;
    }
    if lo == 0 {
        return 0.0;
    }
    if lo == q.len() {
        return 1.0;
    }
    let (a, b) = (f64::from(q[lo - 1]), f64::from(q[lo]));
    ((lo - 1) as f64 + (f64::from(s) - a) / (b - a)) / k
}

impl RankReference {
    /// Reads a reference written by [`RankReference::write`].
    pub fn read(path: &Path) -> Result<Self> {
        let bad = |reason: String| ModelError::Model {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let reference: Self =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not a rank reference: {e}")))?;
        for m in &reference.members {
            if m.quantiles.len() < 2 || !m.quantiles.is_sorted_by(|a, b| a <= b) {
                return Err(bad(format!(
                    "the quantiles of {} are not an increasing list of at least 2 numbers",
                    m.model
                )));
            }
        }
        Ok(reference)
    }

    /// Writes it as JSON.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| ModelError::Model {
            path: path.display().to_string(),
            reason,
        };
        let text = serde_json::to_vec_pretty(self).map_err(|e| bad(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| bad(e.to_string()))
    }

    fn member(&self, model: &str) -> Option<&MemberQuantiles> {
        self.members.iter().find(|m| m.model == model)
    }
}

#[derive(Debug)]
struct Member {
    scorer: Scorer,
    weight: f64,
    /// The member's columns by their index in the model's, when they are not all of them in
    /// order and of the same types.
    columns: Option<Vec<usize>>,
    ranks: Option<MemberQuantiles>,
}

/// What a score stage scores with: one model, or an ensemble of several.
#[derive(Debug)]
pub struct Model {
    members: Vec<Member>,
    combine: Combine,
    columns: Vec<InputColumn>,
    features: Vec<String>,
    label: String,
    version: String,
}

impl Model {
    /// One model, scoring as it is.
    pub fn single(scorer: Scorer) -> Self {
        Self {
            features: scorer.features().to_vec(),
            columns: scorer.columns().to_vec(),
            label: scorer.label(),
            version: scorer.version().to_string(),
            members: vec![Member {
                scorer,
                weight: 1.0,
                columns: None,
                ranks: None,
            }],
            combine: Combine::Mean,
        }
    }

    /// Loads every member (one model without `ensemble` is [`Model::single`]).
    pub fn load(configs: &[ModelConfig], ensemble: Option<&EnsembleConfig>) -> Result<Self> {
        let scorers = configs
            .iter()
            .map(Scorer::load)
            .collect::<Result<Vec<_>>>()?;
        Self::combine(scorers, configs, ensemble)
    }

    /// Combines loaded scorers (`configs` gives their weights, in the same order).
    pub fn combine(
        scorers: Vec<Scorer>,
        configs: &[ModelConfig],
        ensemble: Option<&EnsembleConfig>,
    ) -> Result<Self> {
        let invalid = |reason: String| ModelError::Model {
            path: configs
                .first()
                .map(|c| c.path.display().to_string())
                .unwrap_or_default(),
            reason,
        };
        match (scorers.len(), ensemble) {
            (0, _) => Err(invalid("no model configured".into())),
            (1, None) => scorers
                .into_iter()
                .next()
                .map(Self::single)
                .ok_or_else(|| invalid("no model configured".into())),
            _ => Self::ensemble(scorers, configs, ensemble.cloned().unwrap_or_default())
                .map_err(invalid),
        }
    }

    fn ensemble(
        scorers: Vec<Scorer>,
        configs: &[ModelConfig],
        cfg: EnsembleConfig,
    ) -> std::result::Result<Self, String> {
        let problems = cfg.problems(configs);
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        if scorers.len() != configs.len() {
            return Err(format!(
                "{} models loaded for {} configured",
                scorers.len(),
                configs.len()
            ));
        }
        let reference = match (cfg.combine, &cfg.reference) {
            (Combine::RankAverage, Some(path)) => {
                Some(RankReference::read(path).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        let mut columns: Vec<InputColumn> = Vec::new();
        let mut conflicts = Vec::new();
        for s in &scorers {
            for c in s.columns() {
                match columns.iter_mut().find(|u| u.name == c.name) {
                    None => columns.push(c.clone()),
                    Some(u) => match u.element.merge(c.element) {
                        Some(e) => u.element = e,
                        None => conflicts.push(format!(
                            "column {:?} is read as {} by one member and as {} by {}",
                            c.name,
                            u.element.name(),
                            c.element.name(),
                            s.label()
                        )),
                    },
                }
            }
        }
        if !conflicts.is_empty() {
            return Err(conflicts.join("; "));
        }
        let features: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        let mut members = Vec::with_capacity(scorers.len());
        for (scorer, cfg) in scorers.into_iter().zip(configs) {
            let own: Vec<usize> = scorer
                .features()
                .iter()
                .filter_map(|f| features.iter().position(|u| u == f))
                .collect();
            let identity = own.len() == features.len()
                && own.iter().enumerate().all(|(i, &c)| i == c)
                && scorer.columns() == columns.as_slice();
            let ranks = match &reference {
                Some(r) => Some(r.member(&scorer.label()).cloned().ok_or_else(|| {
                    format!(
                        "the rank reference holds no quantiles of {} (it has {}): write one with `riskpipe backtest` for these models",
                        scorer.label(),
                        r.members
                            .iter()
                            .map(|m| m.model.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?),
                None => None,
            };
            members.push(Member {
                scorer,
                weight: cfg.weight.unwrap_or(1.0),
                columns: (!identity).then_some(own),
                ranks,
            });
        }
        let weighted = cfg.combine != Combine::Mean;
        let label = format!(
            "{}({})",
            cfg.combine.as_str(),
            members
                .iter()
                .map(|m| match weighted && m.weight != 1.0 {
                    true => format!("{}*{}", m.scorer.label(), m.weight),
                    false => m.scorer.label(),
                })
                .collect::<Vec<_>>()
                .join(",")
        );
        let version = crate::version_of(label.as_bytes());
        Ok(Self {
            members,
            combine: cfg.combine,
            columns,
            features,
            label,
            version,
        })
    }

    /// Feature columns the model reads, in order (for an ensemble, every member's).
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// What score records name the model by: `<file>@<version>`, or for an ensemble
    /// `<combine>(<member>,...)` with each member's weight after a `*` when it is not 1.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The version: the file's for one model; for an ensemble, of its label.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether several models are combined.
    pub fn is_ensemble(&self) -> bool {
        self.members.len() > 1
    }

    /// How the members are combined.
    pub fn combination(&self) -> Combine {
        self.combine
    }

    /// The members' labels, in order.
    pub fn member_labels(&self) -> Vec<String> {
        self.members.iter().map(|m| m.scorer.label()).collect()
    }

    /// The members' weights, in order.
    pub fn member_weights(&self) -> Vec<f64> {
        self.members.iter().map(|m| m.weight).collect()
    }

    /// The members.
    pub fn scorers(&self) -> impl Iterator<Item = &Scorer> {
        self.members.iter().map(|m| &m.scorer)
    }

    /// Reads the model's columns of `batch` (every member's).
    pub fn inputs(&self, batch: &RecordBatch) -> Result<Inputs> {
        Inputs::read(&self.columns, batch)
    }

    /// The columns the model reads and how it reads each.
    pub fn columns(&self) -> &[InputColumn] {
        &self.columns
    }

    /// Whether it reads any text input (its alerts' reasons then carry text values).
    pub fn reads_text(&self) -> bool {
        self.columns.iter().any(|c| c.element.is_text())
    }

    /// Scores every row of `batch`.
    pub fn score(&mut self, batch: &RecordBatch) -> Result<Vec<f32>> {
        let inputs = self.inputs(batch)?;
        self.score_inputs(&inputs)
    }

    /// The model's name: a single model's, an ensemble's label.
    pub fn name(&self) -> &str {
        match self.members.as_slice() {
            [one] => one.scorer.name(),
            _ => &self.label,
        }
    }

    /// Scores the rows of `inputs` (read by [`Self::inputs`]).
    pub fn score_inputs(&mut self, inputs: &Inputs) -> Result<Vec<f32>> {
        self.score_members(inputs, None)
    }

    /// [`Self::score_inputs`], also giving each member's scores in `each` (a single model's
    /// are its own).
    pub fn score_members(
        &mut self,
        inputs: &Inputs,
        mut each: Option<&mut Vec<Vec<f32>>>,
    ) -> Result<Vec<f32>> {
        let rows = inputs.rows;
        if let [only] = self.members.as_mut_slice() {
            let scores = only.scorer.score_inputs(inputs)?;
            if let Some(each) = each {
                *each = vec![scores.clone()];
            }
            return Ok(scores);
        }
        let mut combined = vec![0f64; rows];
        let mut total_weight = 0f64;
        if let Some(each) = each.as_deref_mut() {
            each.clear();
        }
        for m in &mut self.members {
            let scores = match &m.columns {
                None => m.scorer.score_inputs(inputs)?,
                Some(own) => {
                    // Each of the member's columns, as the member reads it (a column the
                    // ensemble reads wider is cast back).
                    let mut cols: Vec<ArrayRef> = Vec::with_capacity(own.len());
                    for (c, &u) in m.scorer.columns().iter().zip(own) {
                        let col = inputs.columns.get(u).ok_or_else(|| {
                            ModelError::BadInput(format!("model column {u} not given"))
                        })?;
                        let target = c.element.arrow();
                        cols.push(if col.data_type() == &target {
                            col.clone()
                        } else {
                            arrow::compute::cast(col, &target)
                                .map_err(|e| ModelError::BadInput(e.to_string()))?
                        });
                    }
                    let refs: Vec<&ArrayRef> = cols.iter().collect();
                    m.scorer.score_columns(&refs, rows)?
                }
            };
            let weight = match self.combine {
                Combine::Mean => 1.0,
                Combine::WeightedMean | Combine::RankAverage => m.weight,
            };
            total_weight += weight;
            for (c, &s) in combined.iter_mut().zip(&scores) {
                let value = match &m.ranks {
                    Some(r) => r.rank(s),
                    None => f64::from(s),
                };
                *c += weight * value;
            }
            if let Some(each) = each.as_deref_mut() {
                each.push(scores);
            }
        }
        Ok(combined
            .into_iter()
            .map(|c| (c / total_weight) as f32)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_interpolate_between_quantiles_and_split_ties() {
        let q = [0.0f32, 0.1, 0.1, 0.1, 0.5];
        assert_eq!(rank(&q, -1.0), 0.0);
        assert_eq!(rank(&q, 0.0), 0.0);
        // Equal to the run q[1..=3]: its middle, 2 of 4.
        assert_eq!(rank(&q, 0.1), 0.5);
        // Halfway between q[3] = 0.1 and q[4] = 0.5.
        assert!((rank(&q, 0.3) - 3.5 / 4.0).abs() < 1e-7);
        assert_eq!(rank(&q, 0.5), 1.0);
        assert_eq!(rank(&q, 2.0), 1.0);
        assert!((rank(&q, 0.05) - 0.5 / 4.0).abs() < 1e-7);
    }

    #[test]
    fn quantiles_of_scores_are_the_sorted_scores_at_k_per_mille() {
        let scores: Vec<f32> = (0..=2000).rev().map(|i| i as f32 / 2000.0).collect();
        let m = MemberQuantiles::of("m@1".into(), &scores).expect("quantiles");
        assert_eq!(m.quantiles.len(), RANK_QUANTILES + 1);
        assert_eq!(m.quantiles[0], 0.0);
        assert_eq!(m.quantiles[500], 0.5);
        assert_eq!(m.quantiles[1000], 1.0);
        // A score's rank is its share of the reference below it.
        assert!((m.rank(0.25) - 0.25).abs() < 1e-6);
        assert!(MemberQuantiles::of("m@1".into(), &[f32::NAN]).is_none());
    }

    #[test]
    fn the_section_lists_every_problem() {
        let mut a = ModelConfig::new("a.onnx");
        let b = ModelConfig::new("b.onnx");
        a.weight = Some(-1.0);
        let cfg = EnsembleConfig {
            combine: Combine::WeightedMean,
            reference: Some("r.json".into()),
        };
        let p = cfg.problems(&[a.clone(), b.clone()]);
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(p[0].contains("positive"), "{p:#?}");
        assert!(p[1].contains("needs a weight"), "{p:#?}");
        assert!(p[2].contains("only read by"), "{p:#?}");
        let rank = EnsembleConfig {
            combine: Combine::RankAverage,
            reference: None,
        };
        let p = rank.problems(&[b]);
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(p[0].contains("there is one") && p[1].contains("needs ensemble.reference"));
    }
}
