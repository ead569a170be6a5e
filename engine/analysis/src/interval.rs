//! Confidence intervals for the effects the canary report shows beside each verdict: the
//! Hodges–Lehmann shift of a continuous metric (Moses' interval) and the difference of two
//! rates (Newcombe's hybrid score interval). Both read candidate − baseline.

use crate::judge::Counts;
use crate::stats::norm_ppf;

/// Largest sample size per arm [`hodges_lehmann_interval`] uses before thinning.
pub const MOSES_MAX_PER_ARM: usize = 1000;

/// Distribution-free confidence interval for the Hodges–Lehmann shift (candidate − baseline)
/// at confidence `level` (e.g. 0.98): Moses' interval, the `k`-th smallest and `k`-th largest
/// of the `n·m` pairwise differences `candidate[j] − baseline[i]`, with
/// `k = ⌊nm/2 − z·√(nm(n+m+1)/12)⌋` and `z` the normal quantile at `(1 + level)/2` (the normal
/// approximation of U's distribution; with ties the coverage is approximate). Beyond
/// [`MOSES_MAX_PER_ARM`] values per arm, each arm is thinned to that many evenly spaced order
/// statistics and the rank is scaled to the thinned differences, while `k` is taken from the
/// real sizes. Non-finite values are no samples: they are left out.
///
/// `None` when an arm has fewer than 2 finite values or `k < 1` (too few samples for the
/// level: 3 values per arm cannot give a 98 % interval).
pub fn hodges_lehmann_interval(
    baseline: &[f64],
    candidate: &[f64],
    level: f64,
) -> Option<(f64, f64)> {
    // the sizes are those of the finite values: a NaN is no sample
    let (tb, tc) = (
        order_statistics(baseline, MOSES_MAX_PER_ARM),
        order_statistics(candidate, MOSES_MAX_PER_ARM),
    );
    let finite = |v: &[f64]| v.iter().filter(|x| x.is_finite()).count();
    let (n_b, n_c) = (finite(baseline), finite(candidate));
    if n_b < 2 || n_c < 2 {
        return None;
    }
    let (n, m) = (n_b as f64, n_c as f64);
    let nm = n * m;
    let z = norm_ppf(0.5 + level / 2.0);
    let k = (nm / 2.0 - z * (nm * (n + m + 1.0) / 12.0).sqrt()).floor();
    if k < 1.0 {
        return None;
    }
    let mut d: Vec<f64> = Vec::with_capacity(tb.len() * tc.len());
    for x in &tc {
        for y in &tb {
            d.push(x - y);
        }
    }
    // rank k of nm scaled to the (thinned) differences, in integers: (k / nm) * len in
    // floating point can round above k even when nothing was thinned
    let len = d.len();
    let (k, nm, l) = (k as u128, (n_b * n_c) as u128, len as u128);
    let i = (k * l).div_ceil(nm).clamp(1, l) as usize - 1;
    // two selections instead of sorting up to a million differences on every look; k < nm / 2,
    // so the lower rank is at most the upper one
    debug_assert!(i <= len - 1 - i);
    let (_, &mut lower, above) = d.select_nth_unstable_by(i, f64::total_cmp);
    let upper = if len - 1 - i == i {
        lower
    } else {
        let j = len - 1 - i - (i + 1);
        *above.select_nth_unstable_by(j, f64::total_cmp).1
    };
    Some((lower, upper))
}

/// Sorted finite values thinned to at most `max` evenly spaced order statistics.
fn order_statistics(v: &[f64], max: usize) -> Vec<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    if s.len() <= max {
        return s;
    }
    (0..max)
        .map(|k| s[(k * s.len() + s.len() / 2) / max])
        .collect()
}

/// Newcombe's hybrid score interval (method 10 of Newcombe, 1998) for the rate difference
/// candidate − baseline at confidence `level`: built from the Wilson score interval of each
/// arm, so it stays inside [−1, 1] and behaves at 0/n and n/n, where the Wald interval
/// collapses to a point.
///
/// `None` when an arm has no trials (`total == 0`): there is no rate to compare.
pub fn newcombe_interval(baseline: Counts, candidate: Counts, level: f64) -> Option<(f64, f64)> {
    if baseline.total == 0 || candidate.total == 0 {
        return None;
    }
    let z = norm_ppf(0.5 + level / 2.0);
    let wilson = |k: Counts| {
        let (n, p) = (k.total as f64, k.rate());
        let d = 1.0 + z * z / n;
        let centre = (p + z * z / (2.0 * n)) / d;
        let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / d;
        (p, centre - half, centre + half)
    };
    let ((pb, lb, ub), (pc, lc, uc)) = (wilson(baseline), wilson(candidate));
    let diff = pc - pb;
    Some((
        diff - ((pc - lc).powi(2) + (ub - pb).powi(2)).sqrt(),
        diff + ((uc - pc).powi(2) + (pb - lb).powi(2)).sqrt(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hodges_lehmann_interval_ignores_non_finite_values() {
        let b: Vec<f64> = (0..30).map(|i| (i * 7 % 30) as f64).collect();
        let c: Vec<f64> = b.iter().map(|x| x + 4.0).collect();
        let clean = hodges_lehmann_interval(&b, &c, 0.95);
        assert!(clean.is_some());
        let mut bn = b.clone();
        bn.extend([f64::NAN, f64::INFINITY, f64::NEG_INFINITY]);
        let mut cn = c.clone();
        cn.push(f64::NAN);
        assert_eq!(hodges_lehmann_interval(&bn, &cn, 0.95), clean);
        // an arm with no finite value has no interval (and must not panic)
        assert_eq!(hodges_lehmann_interval(&[f64::NAN; 5], &c, 0.95), None);
    }
}
