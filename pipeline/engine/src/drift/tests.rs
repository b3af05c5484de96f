//! Drift: PSI golden values, bins, the report and the live monitor.

use std::sync::Arc;

use super::*;

#[test]
fn psi_golden_values_on_hand_built_distributions() {
    let halves = Bins {
        edges: vec![0.0],
        shares: vec![0.5, 0.5],
        range: None,
        categories: Vec::new(),
    };
    assert_eq!(halves.psi(&[50, 50]), Some(0.0));
    // (0.25 − 0.5)·ln(0.5) + (0.75 − 0.5)·ln(1.5)
    let psi = halves.psi(&[25, 75]).expect("psi");
    assert!((psi - 0.274_653_072_167_027).abs() < 1e-12, "{psi}");
    // An empty bin is floored, not infinite: (1e-4 − 0.5)·ln(1e-4/0.5) + (1 − 0.5)·ln(2).
    let psi = halves.psi(&[0, 10]).expect("psi");
    let want = (1e-4 - 0.5) * (1e-4f64 / 0.5).ln() + 0.5 * 2f64.ln();
    assert!((psi - want).abs() < 1e-12, "{psi} vs {want}");
    assert_eq!(halves.psi(&[0, 0]), None);
    assert_eq!(halves.psi(&[1, 2, 3]), None);
}

/// A batch of `n` rows on `day`, column `X` holding `value(i)`.
fn rows(day: i64, n: usize, value: impl Fn(usize) -> f64) -> RecordBatch {
    let t: Vec<i64> = (0..n).map(|i| day * DAY_NS + i as i64).collect();
    RecordBatch::try_from_iter([
        (
            "T",
            Arc::new(arrow::array::TimestampNanosecondArray::from(t)) as arrow::array::ArrayRef,
        ),
        (
            "X",
            Arc::new(arrow::array::Float64Array::from_iter_values(
                (0..n).map(value),
            )),
        ),
    ])
    .expect("batch")
}

/// A monitor config of column `X` against 0..1000 uniform, `window_days` days, 500 rows.
fn uniform_reference(window_days: u32) -> (tempfile::TempDir, DriftConfig) {
    let reference = Reference {
        period: "test".into(),
        columns: vec![(
            "X".into(),
            Bins::of(&(0..1000).map(f64::from).collect::<Vec<_>>(), 10),
        )],
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("reference.json");
    reference.write(&path).expect("write");
    let cfg = DriftConfig {
        reference: path,
        threshold: 0.2,
        window_days,
        min_rows: 500,
        warm_up: None,
    };
    (dir, cfg)
}

/// The live monitor: quiet on the reference's own distribution, one crossing over when the
/// window has moved, one back under once the shifted days left the window; nothing below
/// `min_rows`.
#[test]
fn the_monitor_reports_each_crossing_once_as_the_window_moves() {
    let (_dir, cfg) = uniform_reference(2);
    let mut m = Monitor::new(&cfg, "T", std::time::Duration::ZERO).expect("monitor");
    m.observe(&rows(100, 400, |i| i as f64 * 2.5))
        .expect("observe");
    assert_eq!(m.psi(), vec![("X", None)], "under min_rows");
    m.observe(&rows(100, 600, |i| i as f64 * 1000.0 / 600.0))
        .expect("observe");
    assert!(m.psi()[0].1.expect("psi") < 0.2);
    assert!(m.report().is_empty());
    // Two days of values ×3: the window (days 101-102) has moved.
    m.observe(&rows(101, 1000, |i| i as f64 * 3.0))
        .expect("observe");
    m.observe(&rows(102, 1000, |i| i as f64 * 3.0))
        .expect("observe");
    assert!(m.psi()[0].1.expect("psi") > 0.2);
    assert_eq!(m.report(), vec![("X".to_string(), true)]);
    assert!(m.report().is_empty(), "reported once");
    // Two days like the reference again: back under.
    m.observe(&rows(103, 1000, |i| i as f64)).expect("observe");
    m.observe(&rows(104, 1000, |i| i as f64)).expect("observe");
    assert_eq!(m.report(), vec![("X".to_string(), false)]);
    // A restored monitor holds the same window.
    let mut restored = Monitor::new(&cfg, "T", std::time::Duration::ZERO).expect("monitor");
    assert!(
        restored
            .restore(&m.snapshot().expect("snapshot"))
            .expect("restore")
    );
    assert_eq!(restored.psi(), m.psi());
}

/// Rows featured before the state had seen the features' reach are not counted: a
/// pipeline starting with empty windows judges no drift on them, however unlike the
/// reference they are; when its state began survives a checkpoint.
#[test]
fn rows_before_the_state_covers_the_reach_are_not_counted() {
    let (_dir, cfg) = uniform_reference(2);
    let reach = std::time::Duration::from_secs(3 * 86_400);
    let mut m = Monitor::new(&cfg, "T", reach).expect("monitor");
    // Days 100-102: empty windows, values unlike the reference: not counted.
    for day in 100..103 {
        m.observe(&rows(day, 1000, |i| i as f64 * 50.0))
            .expect("observe");
    }
    assert_eq!(m.psi(), vec![("X", None)]);
    assert!(m.report().is_empty());
    assert_eq!(m.counted_from(), Some(103 * DAY_NS));
    // From day 103 on the state covers the reach: counted, and judged once the whole
    // window (days 103-104) is.
    m.observe(&rows(103, 1000, |i| i as f64)).expect("observe");
    assert_eq!(m.psi(), vec![("X", None)], "half the window in the warm-up");
    m.observe(&rows(104, 1000, |i| i as f64)).expect("observe");
    assert!(m.psi()[0].1.expect("psi") < 0.2);
    // A restored monitor keeps when its state began.
    let mut restored = Monitor::new(&cfg, "T", reach).expect("monitor");
    assert!(
        restored
            .restore(&m.snapshot().expect("snapshot"))
            .expect("restore")
    );
    restored
        .restore_since(&m.since_snapshot().expect("since"))
        .expect("restore since");
    assert_eq!(restored.counted_from(), m.counted_from());
    assert_eq!(restored.psi(), m.psi());
    // A checkpoint that does not say (written before it did) counts as covered.
    let mut old = Monitor::new(&cfg, "T", reach).expect("monitor");
    assert!(
        old.restore(&m.snapshot().expect("snapshot"))
            .expect("restore")
    );
    old.assume_covered();
    old.observe(&rows(105, 1000, |i| i as f64 * 50.0))
        .expect("observe");
    assert!(old.psi()[0].1.expect("psi") > 0.2);
}

#[test]
fn bins_are_deciles_with_ties_merged() {
    let values: Vec<f64> = (1..=100).map(f64::from).collect();
    let b = Bins::of(&values, 10);
    assert_eq!(
        b.edges,
        vec![11.0, 21.0, 31.0, 41.0, 51.0, 61.0, 71.0, 81.0, 91.0]
    );
    assert_eq!(b.shares[0], 0.11);
    assert!((b.shares.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert_eq!(b.psi(&b.counts(values.iter().copied())), Some(0.0));
    // 70% zeros: one bin for them.
    let mut skewed = vec![0.0; 70];
    skewed.extend((1..=30).map(f64::from));
    let b = Bins::of(&skewed, 10);
    assert_eq!(b.edges[0], 0.0);
    assert_eq!(b.shares[0], 0.7);
    assert_eq!(b.bin(0.0), 0);
    assert_eq!(b.bin(1e9), b.shares.len() - 1);
    // The same values ×3 have moved.
    let tripled: Vec<f64> = values.iter().map(|v| v * 3.0).collect();
    let b = Bins::of(&values, 10);
    assert!(b.psi(&b.counts(tripled)).expect("psi") > DRIFTED);
}

/// A text column (a model's categorical input) is binned by its values: the most frequent a bin
/// each, every other value (also one the reference never saw) in the last bin; PSI 0 on the
/// reference's own values, over the drift line when the mix moves.
#[test]
fn text_columns_are_binned_by_their_most_frequent_values() {
    let mut reference: Vec<&str> = Vec::new();
    for (v, n) in [
        ("pos", 50),
        ("online", 30),
        ("atm", 15),
        ("kiosk", 3),
        ("mail", 2),
    ] {
        reference.extend(std::iter::repeat_n(v, n));
    }
    let b = Bins::of_text(reference.iter().copied(), 3);
    assert_eq!(b.categories, ["atm", "online", "pos"]);
    assert_eq!(b.shares, vec![0.15, 0.3, 0.5, 0.05]);
    assert!(b.is_text() && b.edges.is_empty() && b.range.is_none());
    let column: arrow::array::ArrayRef = Arc::new(arrow::array::StringArray::from(vec![
        Some("pos"),
        Some("atm"),
        Some("never-seen"),
        None,
        Some("mail"),
    ]));
    assert_eq!(
        b.bins_of(&column).expect("bins"),
        vec![Some(2), Some(0), Some(3), None, Some(3)]
    );
    let same =
        Arc::new(arrow::array::StringArray::from(reference.clone())) as arrow::array::ArrayRef;
    let counts = |c: &arrow::array::ArrayRef| {
        let mut n = vec![0u64; b.shares.len()];
        for i in b.bins_of(c).expect("bins").into_iter().flatten() {
            n[i] += 1;
        }
        n
    };
    assert!(b.psi(&counts(&same)).expect("psi").abs() < 1e-12);
    let moved: Vec<&str> = reference
        .iter()
        .map(|&v| if v == "pos" { "online" } else { v })
        .collect();
    let moved = Arc::new(arrow::array::StringArray::from(moved)) as arrow::array::ArrayRef;
    assert!(b.psi(&counts(&moved)).expect("psi") > DRIFTED);
    // The reference file keeps the categories; a number's bins write none.
    let text = serde_json::to_string(&b).expect("json");
    assert_eq!(serde_json::from_str::<Bins>(&text).expect("read"), b);
    assert!(
        !serde_json::to_string(&Bins::of(&[1.0, 2.0], 10))
            .expect("json")
            .contains("categories")
    );
}
