//! Classification metrics of a backtest, as the Fraud Detection Handbook defines them.

use std::collections::{HashMap, HashSet};

/// One scored transaction, as the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct Scored {
    /// UTC day number (days since 1970-01-01).
    pub day: i64,
    /// Customer / card.
    pub entity: i64,
    /// True label.
    pub fraud: bool,
    /// Model score.
    pub score: f64,
}

/// Rows grouped by distinct score, from the highest: (true positives, false positives) added at
/// each threshold.
fn by_threshold(rows: &[Scored]) -> Vec<(f64, u64, u64)> {
    let mut sorted: Vec<&Scored> = rows.iter().collect();
    sorted.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut out: Vec<(f64, u64, u64)> = Vec::new();
    for r in sorted {
        match out.last_mut() {
            Some((s, tp, fp)) if *s == r.score => {
                if r.fraud {
                    *tp += 1
                } else {
                    *fp += 1
                }
            }
            _ => out.push((r.score, u64::from(r.fraud), u64::from(!r.fraud))),
        }
    }
    out
}

/// Area under the ROC curve (ties count one half). `None` without both classes.
pub fn auc_roc(rows: &[Scored]) -> Option<f64> {
    let p = rows.iter().filter(|r| r.fraud).count() as f64;
    let n = rows.len() as f64 - p;
    if p == 0.0 || n == 0.0 {
        return None;
    }
    let (mut tp, mut area) = (0.0, 0.0);
    for (_, dtp, dfp) in by_threshold(rows) {
        // Trapezoid over this threshold's step.
        area += dfp as f64 * (tp + dtp as f64 / 2.0);
        tp += dtp as f64;
    }
    Some(area / (p * n))
}

/// Average precision: sum over thresholds of (recall step) × precision, as scikit-learn.
pub fn average_precision(rows: &[Scored]) -> Option<f64> {
    let p = rows.iter().filter(|r| r.fraud).count() as f64;
    if p == 0.0 {
        return None;
    }
    let (mut tp, mut fp, mut ap) = (0.0, 0.0, 0.0);
    for (_, dtp, dfp) in by_threshold(rows) {
        tp += dtp as f64;
        fp += dfp as f64;
        ap += (dtp as f64 / p) * (tp / (tp + fp));
    }
    Some(ap)
}

/// Points of a curve, (x, y).
pub type Curve = Vec<(f64, f64)>;

/// ROC points (false positive rate, true positive rate) and PR points (recall, precision).
pub fn curves(rows: &[Scored]) -> (Curve, Curve) {
    let p = rows.iter().filter(|r| r.fraud).count().max(1) as f64;
    let n = (rows.len() as f64 - rows.iter().filter(|r| r.fraud).count() as f64).max(1.0);
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut roc = vec![(0.0, 0.0)];
    let mut pr = vec![(0.0, 1.0)];
    for (_, dtp, dfp) in by_threshold(rows) {
        tp += dtp as f64;
        fp += dfp as f64;
        roc.push((fp / n, tp / p));
        pr.push((tp / p, tp / (tp + fp)));
    }
    (roc, pr)
}

/// Card Precision@k: per day, the k customers with the highest maximum score (customers whose
/// compromise was detected on an earlier day removed); the share of them with a fraud that day;
/// averaged over days. Returns (mean, per-day values).
pub fn card_precision_at_k(rows: &[Scored], k: usize) -> (f64, Vec<f64>) {
    let mut days: Vec<i64> = rows
        .iter()
        .map(|r| r.day)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    days.sort_unstable();
    let mut detected: HashSet<i64> = HashSet::new();
    let mut per_day = Vec::new();
    for day in days {
        let mut cards: HashMap<i64, (f64, bool)> = HashMap::new();
        for r in rows
            .iter()
            .filter(|r| r.day == day && !detected.contains(&r.entity))
        {
            let e = cards.entry(r.entity).or_insert((f64::NEG_INFINITY, false));
            e.0 = e.0.max(r.score);
            e.1 |= r.fraud;
        }
        let mut ranked: Vec<(i64, f64, bool)> =
            cards.into_iter().map(|(c, (s, f))| (c, s, f)).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let top: Vec<i64> = ranked.iter().take(k).filter(|c| c.2).map(|c| c.0).collect();
        per_day.push(top.len() as f64 / k as f64);
        detected.extend(top);
    }
    let mean = if per_day.is_empty() {
        0.0
    } else {
        per_day.iter().sum::<f64>() / per_day.len() as f64
    };
    (mean, per_day)
}

/// Precision, recall and F1 of alerting at `threshold`.
pub fn at_threshold(rows: &[Scored], threshold: f64) -> (f64, f64, f64) {
    let (mut tp, mut fp, mut fn_) = (0u64, 0u64, 0u64);
    for r in rows {
        match (r.score >= threshold, r.fraud) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            _ => {}
        }
    }
    let precision = if tp + fp == 0 {
        0.0
    } else {
        tp as f64 / (tp + fp) as f64
    };
    let recall = if tp + fn_ == 0 {
        0.0
    } else {
        tp as f64 / (tp + fn_) as f64
    };
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    (precision, recall, f1)
}

/// The handbook's test set: test day k (k = 0..test_days) is `train_start + train_days +
/// delay_days + k`; on it, customers already known compromised are dropped: those with a fraud
/// in the training days or on `train_start + train_days + j` for any j < k.
pub fn handbook_test_set(
    rows: &[Scored],
    train_start: i64,
    train_days: i64,
    delay_days: i64,
    test_days: i64,
) -> Vec<Scored> {
    let mut known: HashSet<i64> = rows
        .iter()
        .filter(|r| r.fraud && r.day >= train_start && r.day < train_start + train_days)
        .map(|r| r.entity)
        .collect();
    let mut test = Vec::new();
    for k in 0..test_days {
        if k > 0 {
            let delay_day = train_start + train_days + k - 1;
            known.extend(
                rows.iter()
                    .filter(|r| r.fraud && r.day == delay_day)
                    .map(|r| r.entity),
            );
        }
        let day = train_start + train_days + delay_days + k;
        test.extend(
            rows.iter()
                .filter(|r| r.day == day && !known.contains(&r.entity))
                .copied(),
        );
    }
    test
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(day: i64, customer: i64, fraud: bool, score: f64) -> Scored {
        Scored {
            day,
            entity: customer,
            fraud,
            score,
        }
    }

    #[test]
    fn auc_of_hand_computed_cases() {
        // Perfect ranking, inverted ranking, and one tie between a fraud and a genuine.
        let perfect = [s(0, 1, true, 0.9), s(0, 2, false, 0.1)];
        assert_eq!(auc_roc(&perfect), Some(1.0));
        let inverted = [s(0, 1, true, 0.1), s(0, 2, false, 0.9)];
        assert_eq!(auc_roc(&inverted), Some(0.0));
        // Pairs (fraud, genuine): (0.8 vs 0.8) tie = 0.5, (0.8 vs 0.3) = 1, (0.2 vs 0.8) = 0,
        // (0.2 vs 0.3) = 0 -> 1.5 / 4.
        let tied = [
            s(0, 1, true, 0.8),
            s(0, 2, true, 0.2),
            s(0, 3, false, 0.8),
            s(0, 4, false, 0.3),
        ];
        assert_eq!(auc_roc(&tied), Some(0.375));
        assert_eq!(auc_roc(&[s(0, 1, true, 0.5)]), None);
    }

    #[test]
    fn average_precision_matches_sklearn_definition() {
        // Scores 0.9 (fraud), 0.8 (genuine), 0.7 (fraud): AP = 0.5*1 + 0.5*(2/3).
        let rows = [s(0, 1, true, 0.9), s(0, 2, false, 0.8), s(0, 3, true, 0.7)];
        let ap = average_precision(&rows).unwrap_or_default();
        assert!((ap - (0.5 + 1.0 / 3.0)).abs() < 1e-12, "{ap}");
    }

    #[test]
    fn card_precision_removes_detected_cards() {
        // Day 0: card 1 fraud (top), card 2 genuine. Day 1: card 1 again (removed), card 3 fraud.
        let rows = [
            s(0, 1, true, 0.9),
            s(0, 2, false, 0.5),
            s(0, 1, false, 0.1),
            s(1, 1, true, 0.99),
            s(1, 3, true, 0.4),
            s(1, 4, false, 0.3),
        ];
        let (mean, per_day) = card_precision_at_k(&rows, 2);
        assert_eq!(per_day, vec![0.5, 0.5]);
        assert_eq!(mean, 0.5);
    }

    #[test]
    fn threshold_metrics() {
        let rows = [
            s(0, 1, true, 0.9),
            s(0, 2, false, 0.8),
            s(0, 3, true, 0.2),
            s(0, 4, false, 0.1),
        ];
        let (p, r, f1) = at_threshold(&rows, 0.5);
        assert_eq!((p, r), (0.5, 0.5));
        assert!((f1 - 0.5).abs() < 1e-12);
    }

    #[test]
    fn test_set_drops_known_compromised_customers() {
        // Train day 0 (1 day), delay 1 day, test days 2 and 3.
        let rows = [
            s(0, 1, true, 0.0),  // customer 1 known from training
            s(1, 2, true, 0.0),  // customer 2 compromised on delay day 1: known from test day k=1
            s(2, 1, false, 0.0), // dropped
            s(2, 2, false, 0.0), // kept (k = 0)
            s(3, 2, false, 0.0), // dropped (k = 1)
            s(3, 3, false, 0.0), // kept
        ];
        let test = handbook_test_set(&rows, 0, 1, 1, 2);
        let kept: Vec<(i64, i64)> = test.iter().map(|r| (r.day, r.entity)).collect();
        assert_eq!(kept, vec![(2, 2), (3, 3)]);
    }
}
