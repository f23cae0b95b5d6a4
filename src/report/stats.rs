//! Confidence intervals over test episodes, and paired comparisons.
//!
//! Every algorithm of a run answers the same fixed test episodes, so two
//! algorithms are compared episode by episode: the paired difference
//! `d_i = a_i - b_i` removes the variance the episodes share (an easy
//! episode is easy for both), and its interval is much narrower than what
//! two separate intervals suggest.
//!
//! Intervals are Student-t intervals of a mean,
//! `mean +/- t_{0.975, n-1} * s / sqrt(n)` with `s` the sample standard
//! deviation: for 600 episodes `t = 1.9640` (the 1.96 of papers), for 10
//! episodes `t = 2.2622`. The quantile is `statrs`'s.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Two-sided 95% quantile of Student's t with `df` degrees of freedom
/// (`t_{0.975, df}`); `None` for `df = 0`.
pub fn t_975(df: usize) -> Option<f64> {
    let t = StudentsT::new(0.0, 1.0, df as f64).ok()?;
    Some(t.inverse_cdf(0.975))
}

/// A mean and the half-width of its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub mean: f64,
    /// `None` below two values (no spread to estimate).
    pub ci95: Option<f64>,
    pub n: usize,
}

impl Interval {
    /// Whether the interval lies entirely on one side of zero.
    pub fn excludes_zero(&self) -> bool {
        self.ci95.is_some_and(|c| self.mean.abs() > c)
    }
}

/// Mean of `xs` with its Student-t 95% interval; the mean is NaN when `xs`
/// is empty.
pub fn mean_interval(xs: &[f64]) -> Interval {
    let n = xs.len();
    let mean = xs.iter().sum::<f64>() / n as f64;
    let ci95 = t_975(n.saturating_sub(1)).map(|t| {
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        t * var.sqrt() / (n as f64).sqrt()
    });
    Interval { mean, ci95, n }
}

/// Sample standard deviation (n - 1 in the denominator); `None` below two
/// values.
pub fn sample_sd(xs: &[f64]) -> Option<f64> {
    let n = xs.len();
    (n >= 2).then(|| {
        let mean = xs.iter().sum::<f64>() / n as f64;
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    })
}

/// The paired difference `a - b` over the same episodes, in episode order;
/// `None` when the two were not scored on the same number of episodes.
pub fn paired_difference(a: &[f64], b: &[f64]) -> Option<Interval> {
    (a.len() == b.len() && !a.is_empty()).then(|| {
        let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        mean_interval(&d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_the_tables() {
        // Two-sided 95% critical values (any t table, e.g. NIST/SEMATECH
        // e-Handbook, table 1.3.6.7.2).
        for (df, t) in [
            (1, 12.706),
            (2, 4.303),
            (3, 3.182),
            (9, 2.262),
            (29, 2.045),
            (120, 1.980),
        ] {
            assert!((t_975(df).unwrap() - t).abs() < 5e-4, "df {df}");
        }
        assert!((t_975(599).unwrap() - 1.964).abs() < 5e-4);
        assert_eq!(t_975(0), None);
    }

    #[test]
    fn interval_by_hand() {
        // 0, 1, 1, 0: mean 1/2, s^2 = 1/3, half-width t_{.975,3} s / 2
        // = 3.18245 * 0.57735 / 2 = 0.91870.
        let i = mean_interval(&[0.0, 1.0, 1.0, 0.0]);
        assert_eq!(i.mean, 0.5);
        assert!((i.ci95.unwrap() - 0.91870).abs() < 1e-4);
        assert!(!i.excludes_zero());
        // One value: a mean, no interval.
        let one = mean_interval(&[0.7]);
        assert_eq!((one.mean, one.ci95, one.n), (0.7, None, 1));
    }

    #[test]
    fn paired_difference_by_hand() {
        // Episode accuracies of two algorithms on 5 episodes: separately
        // their intervals overlap widely, but b beats a on every episode.
        let a = [0.60, 0.80, 0.40, 0.90, 0.70];
        let b = [0.64, 0.86, 0.44, 0.92, 0.74];
        // d = a - b = -0.04, -0.06, -0.04, -0.02, -0.04: mean -0.04,
        // s^2 = (0 + 0.0004 + 0 + 0.0004 + 0) / 4 = 0.0002,
        // half-width t_{.975,4} sqrt(0.0002 / 5) = 2.77645 * 0.0063246
        // = 0.017560.
        let d = paired_difference(&a, &b).unwrap();
        assert!((d.mean + 0.04).abs() < 1e-12);
        assert!((d.ci95.unwrap() - 0.017560).abs() < 1e-5);
        assert!(d.excludes_zero());
        let (ia, ib) = (mean_interval(&a), mean_interval(&b));
        assert!(ia.mean + ia.ci95.unwrap() > ib.mean - ib.ci95.unwrap());
        // Noise: differences of both signs.
        let c = [0.62, 0.78, 0.43, 0.88, 0.71];
        assert!(!paired_difference(&a, &c).unwrap().excludes_zero());
        assert_eq!(paired_difference(&a, &b[..4]), None);
    }
}
