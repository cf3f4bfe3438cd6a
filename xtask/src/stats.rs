//! Order statistics for benchmark samples.

use std::time::Duration;

/// Microseconds per operation.
pub fn per_op_us(elapsed: Duration, ops: usize) -> f64 {
    if ops == 0 {
        return 0.0;
    }
    let ops = ops as f64;
    elapsed.as_secs_f64() * 1e6 / ops
}

/// Summary of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// First and third quartiles (linear interpolation between order statistics).
    pub q1: f64,
    pub q3: f64,
}

impl Summary {
    /// None for an empty set or one with a NaN.
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() || samples.iter().any(|x| x.is_nan()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            median: quantile(&sorted, 0.5),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            q1: quantile(&sorted, 0.25),
            q3: quantile(&sorted, 0.75),
        })
    }
}

/// The `q` quantile of sorted, non-empty samples (type 7, as numpy's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    // pos is in 0..len, so the cast neither truncates nor wraps.
    let lower = pos.floor() as usize;
    let upper = (lower + 1).min(sorted.len() - 1);
    let frac = pos - pos.floor();
    sorted[lower] + (sorted[upper] - sorted[lower]) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_odd_and_even_sets() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!((s.q1, s.q3), (1.5, 2.5));

        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert_eq!((s.q1, s.q3), (1.75, 3.25));

        let s = Summary::of(&[7.0]).unwrap();
        assert_eq!((s.median, s.q1, s.q3), (7.0, 7.0, 7.0));
    }

    #[test]
    fn summary_rejects_empty_and_nan() {
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn per_op() {
        assert_eq!(per_op_us(Duration::from_millis(10), 1000), 10.0);
        assert_eq!(per_op_us(Duration::from_millis(10), 0), 0.0);
    }
}
