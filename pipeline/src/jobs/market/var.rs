//! VaR backtest statistics: exceedances, Kupiec's proportion-of-failures test,
//! Christoffersen's independence test and the Basel traffic light over rolling windows.
//!
//! An exceedance is a day whose realized loss is larger than the VaR predicted for it. With a
//! VaR at confidence `c`, exceedances should be independent Bernoulli(1 − c) draws; the tests
//! below check the rate (Kupiec) and the clustering (Christoffersen), each with a χ²(1) p-value.

use serde::Serialize;

/// Basel traffic-light window length (observations).
pub const BASEL_WINDOW: usize = 250;

/// The Basel zone of a window's exception count (for 99% VaR over 250 observations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Zone {
    /// 0–4 exceptions.
    Green,
    /// 5–9 exceptions.
    Yellow,
    /// 10 or more.
    Red,
}

impl Zone {
    /// The zone of `exceptions` in one 250-observation window.
    pub fn of(exceptions: usize) -> Zone {
        match exceptions {
            0..=4 => Zone::Green,
            5..=9 => Zone::Yellow,
            _ => Zone::Red,
        }
    }
}

/// Everything the VaR report states about one forecast series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VarStats {
    /// Observations evaluated.
    pub observations: usize,
    /// Exceedances.
    pub exceedances: usize,
    /// Exceedances / observations.
    pub rate: f64,
    /// Expected rate, 1 − confidence.
    pub expected_rate: f64,
    /// Kupiec proportion-of-failures likelihood ratio.
    pub kupiec_lr: f64,
    /// Its χ²(1) p-value.
    pub kupiec_p: f64,
    /// Christoffersen independence likelihood ratio.
    pub christoffersen_lr: f64,
    /// Its χ²(1) p-value.
    pub christoffersen_p: f64,
    /// Rolling 250-observation windows in each zone: green, yellow, red.
    pub zones: [usize; 3],
    /// Share of rolling windows in the green zone.
    pub green_share: f64,
}

/// `x · ln(y)` with the convention 0 · ln 0 = 0.
fn xlny(x: f64, y: f64) -> f64 {
    if x == 0.0 { 0.0 } else { x * y.ln() }
}

/// Upper tail of χ² with one degree of freedom.
pub fn chi2_1_sf(x: f64) -> f64 {
    if x <= 0.0 {
        1.0
    } else {
        libm::erfc((x / 2.0).sqrt())
    }
}

/// Kupiec's POF statistic for `x` exceedances in `t` observations at expected rate `p`.
pub fn kupiec(t: usize, x: usize, p: f64) -> f64 {
    let (t, x) = (t as f64, x as f64);
    if t == 0.0 {
        return 0.0;
    }
    let observed = x / t;
    let lr = -2.0 * (xlny(t - x, 1.0 - p) + xlny(x, p))
        + 2.0 * (xlny(t - x, 1.0 - observed) + xlny(x, observed));
    lr.max(0.0)
}

/// Christoffersen's independence statistic of an exceedance sequence.
pub fn christoffersen(hits: &[bool]) -> f64 {
    let mut n = [[0f64; 2]; 2];
    for w in hits.windows(2) {
        n[usize::from(w[0])][usize::from(w[1])] += 1.0;
    }
    let [[n00, n01], [n10, n11]] = n;
    let total = n00 + n01 + n10 + n11;
    if total == 0.0 {
        return 0.0;
    }
    let pi = (n01 + n11) / total;
    let pi0 = if n00 + n01 > 0.0 {
        n01 / (n00 + n01)
    } else {
        0.0
    };
    let pi1 = if n10 + n11 > 0.0 {
        n11 / (n10 + n11)
    } else {
        0.0
    };
    let restricted = xlny(n00 + n10, 1.0 - pi) + xlny(n01 + n11, pi);
    let unrestricted =
        xlny(n00, 1.0 - pi0) + xlny(n01, pi0) + xlny(n10, 1.0 - pi1) + xlny(n11, pi1);
    (-2.0 * (restricted - unrestricted)).max(0.0)
}

/// The statistics of `hits` (true = exceedance) for a VaR at `confidence` (e.g. 0.99).
pub fn var_stats(hits: &[bool], confidence: f64) -> VarStats {
    let t = hits.len();
    let x = hits.iter().filter(|h| **h).count();
    let p = 1.0 - confidence;
    let kupiec_lr = kupiec(t, x, p);
    let christoffersen_lr = christoffersen(hits);
    let mut zones = [0usize; 3];
    if t >= BASEL_WINDOW {
        let mut in_window = hits[..BASEL_WINDOW].iter().filter(|h| **h).count();
        for start in 0..=t - BASEL_WINDOW {
            if start > 0 {
                in_window -= usize::from(hits[start - 1]);
                in_window += usize::from(hits[start + BASEL_WINDOW - 1]);
            }
            zones[Zone::of(in_window) as usize] += 1;
        }
    }
    let windows: usize = zones.iter().sum();
    VarStats {
        observations: t,
        exceedances: x,
        rate: if t > 0 { x as f64 / t as f64 } else { 0.0 },
        expected_rate: p,
        kupiec_lr,
        kupiec_p: chi2_1_sf(kupiec_lr),
        christoffersen_lr,
        christoffersen_p: chi2_1_sf(christoffersen_lr),
        zones,
        green_share: if windows > 0 {
            zones[0] as f64 / windows as f64
        } else {
            0.0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    #[test]
    fn kupiec_matches_hand_computed_cases() {
        // 2 exceptions in 250 at 1%: close to expectation, not rejected.
        close(kupiec(250, 2, 0.01), 0.10843521623679919);
        close(chi2_1_sf(kupiec(250, 2, 0.01)), 0.7419327009526282);
        // 8 exceptions in 250: rejected at 1%.
        close(kupiec(250, 8, 0.01), 7.7335507244945205);
        close(chi2_1_sf(kupiec(250, 8, 0.01)), 0.005420405194127794);
        // Zero exceptions: LR = −2 · 250 · ln 0.99.
        close(kupiec(250, 0, 0.01), -2.0 * 250.0 * 0.99f64.ln());
    }

    #[test]
    fn christoffersen_matches_hand_computed_cases() {
        let seq = [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0].map(|v| v == 1);
        // Transitions n00 = 8, n01 = 2, n10 = 2, n11 = 3.
        close(christoffersen(&seq), 2.3572599079880625);
        close(chi2_1_sf(christoffersen(&seq)), 0.12470105371620124);
        // Same rate after an exception as after none: independent, LR 0.
        let flat = [0, 0, 1, 1, 0, 0, 0, 1, 0, 0].map(|v| v == 1);
        close(christoffersen(&flat), 0.0);
    }

    #[test]
    fn basel_zones_over_rolling_windows() {
        assert_eq!(Zone::of(4), Zone::Green);
        assert_eq!(Zone::of(5), Zone::Yellow);
        assert_eq!(Zone::of(9), Zone::Yellow);
        assert_eq!(Zone::of(10), Zone::Red);
        // 260 observations, exceptions at 0..5 (5 of them): windows starting at 0 hold 5
        // (yellow); from start 1 on they hold 4, 3, 2, 1, 0 (green). 11 windows in all.
        let hits: Vec<bool> = (0..260).map(|i| i < 5).collect();
        let s = var_stats(&hits, 0.99);
        assert_eq!(s.zones, [10, 1, 0]);
        close(s.green_share, 10.0 / 11.0);
        assert_eq!(s.exceedances, 5);
        close(s.rate, 5.0 / 260.0);
        close(s.kupiec_lr, kupiec(260, 5, 0.01));
    }
}
