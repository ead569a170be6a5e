//! Statistical building blocks: the normal distribution, Mann-Whitney U (asymptotic and exact,
//! bit-for-bit the same recipe as `scipy.stats.mannwhitneyu`), the Hodges–Lehmann shift,
//! sample summaries, Fisher's exact test and the two-proportion z-test.

use serde::{Deserialize, Serialize};
use std::f64::consts::{PI, SQRT_2};

/// Alternative hypothesis, with scipy's meaning: `Greater` means the *first* sample (`x`) is
/// stochastically greater than the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Alternative {
    TwoSided,
    Less,
    Greater,
}

/// How the Mann-Whitney p-value is computed (scipy's `method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MwMethod {
    /// Normal approximation with tie correction and continuity correction
    /// (`method="asymptotic", use_continuity=True`).
    Asymptotic,
    /// Exact null distribution of U. Only valid without ties; with ties, or when the sample sizes
    /// are too large for exact counting, the asymptotic method is used instead.
    Exact,
    /// scipy's `auto`: exact when one sample has at most 8 values and there are no ties.
    Auto,
}

/// Result of [`mann_whitney`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MwResult {
    /// U statistic of the first sample (scipy's `statistic`): the number of pairs (xi, yj) with
    /// xi > yj, plus half the ties.
    pub u1: f64,
    pub p_value: f64,
    /// Standardised statistic scipy feeds to the normal survival function (for the U chosen by
    /// the alternative; continuity-corrected).
    pub z: f64,
    /// The method actually used.
    pub method: MwMethod,
}

/// Complementary error function, accurate to ~1e-15 relative: a positive-term series for
/// `erf` below 3 and a Lentz continued fraction above.
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x > 27.0 {
        return 0.0;
    }
    if x == 0.0 {
        return 1.0;
    }
    if x < 3.0 {
        // erf(x) = 2/sqrt(pi) exp(-x^2) sum_n 2^n x^(2n+1) / (1*3*...*(2n+1)); all terms positive.
        let x2 = 2.0 * x * x;
        let mut term = x;
        let mut sum = x;
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= x2 / (2.0 * n + 1.0);
            sum += term;
            if term <= 1e-17 * sum {
                break;
            }
        }
        1.0 - 2.0 / PI.sqrt() * (-x * x).exp() * sum
    } else {
        // erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...))))
        let tiny = 1e-300;
        let mut f = x;
        let mut c = x;
        let mut d = 0.0;
        for k in 1..500 {
            let a = k as f64 / 2.0;
            d = x + a * d;
            if d.abs() < tiny {
                d = tiny;
            }
            d = 1.0 / d;
            c = x + a / c;
            if c.abs() < tiny {
                c = tiny;
            }
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (-x * x).exp() / PI.sqrt() / f
    }
}

/// Standard normal survival function P(Z > z).
pub fn norm_sf(z: f64) -> f64 {
    0.5 * erfc(z / SQRT_2)
}

/// Standard normal CDF P(Z <= z).
pub fn norm_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / SQRT_2)
}

/// Standard normal quantile (inverse CDF), by bisection refined with Newton steps.
pub fn norm_ppf(p: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let (mut lo, mut hi) = (-40.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if norm_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-13 {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; ~1e-15 relative).
pub fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (PI / (PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Average ranks (1-based) of `values` and the tie term Σ(t³ − t) over tie groups.
fn rank_average(values: &[f64]) -> (Vec<f64>, f64) {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i + 1;
        while j < idx.len() && values[idx[j]] == values[idx[i]] {
            j += 1;
        }
        // positions i..j (0-based) share the average of ranks i+1..=j
        let avg = (i + 1 + j) as f64 / 2.0;
        for &k in &idx[i..j] {
            ranks[k] = avg;
        }
        let t = (j - i) as f64;
        tie_term += t * t * t - t;
        i = j;
    }
    (ranks, tie_term)
}

/// Mann-Whitney U test of `x` against `y` with the asymptotic method (normal approximation, tie
/// and continuity corrections), exactly as `scipy.stats.mannwhitneyu(x, y, alternative=...,
/// method="asymptotic", use_continuity=True)`.
pub fn mann_whitney(x: &[f64], y: &[f64], alt: Alternative) -> MwResult {
    mann_whitney_with(x, y, alt, MwMethod::Asymptotic)
}

/// Mann-Whitney U test with an explicit method. Empty samples give a NaN p-value.
pub fn mann_whitney_with(x: &[f64], y: &[f64], alt: Alternative, method: MwMethod) -> MwResult {
    let (n1, n2) = (x.len(), y.len());
    if n1 == 0 || n2 == 0 {
        return MwResult {
            u1: f64::NAN,
            p_value: f64::NAN,
            z: f64::NAN,
            method,
        };
    }
    let xy: Vec<f64> = x.iter().chain(y).copied().collect();
    let (ranks, tie_term) = rank_average(&xy);
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let r1: f64 = ranks[..n1].iter().sum();
    let u1 = r1 - n1f * (n1f + 1.0) / 2.0;
    let u2 = n1f * n2f - u1;
    let (u, f) = match alt {
        Alternative::Greater => (u1, 1.0),
        Alternative::Less => (u2, 1.0),
        Alternative::TwoSided => (u1.max(u2), 2.0),
    };
    let n = n1f + n2f;
    let mu = n1f * n2f / 2.0;
    let s = (n1f * n2f / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)))).sqrt();
    let z = (u - mu - 0.5) / s;
    let ties = tie_term > 0.0;
    let want_exact = match method {
        MwMethod::Asymptotic => false,
        MwMethod::Exact => !ties,
        MwMethod::Auto => !ties && (n1 <= 8 || n2 <= 8),
    };
    let exact = if want_exact {
        exact_u_sf(u, n1, n2)
    } else {
        None
    };
    let (p, used) = match exact {
        Some(sf) => (sf, MwMethod::Exact),
        None => (norm_sf(z), MwMethod::Asymptotic),
    };
    MwResult {
        u1,
        p_value: (p * f).clamp(0.0, 1.0),
        z,
        method: used,
    }
}

/// P(U >= u) under the null for sample sizes (m, n) without ties, by counting: the counts of U
/// are the coefficients of the Gaussian binomial [m+n choose m]_q (Harding 1984). `None` when
/// the counts would not fit exactly in an i128.
fn exact_u_sf(u: f64, m: usize, n: usize) -> Option<f64> {
    let (m, n) = (m.min(n), m.max(n));
    let log_total =
        ln_gamma((m + n + 1) as f64) - ln_gamma((m + 1) as f64) - ln_gamma((n + 1) as f64);
    if log_total > 80.0 || m * n > 200_000 {
        return None;
    }
    let deg = m * n;
    let mut c = vec![0i128; deg + 1];
    c[0] = 1;
    for i in 1..=m {
        // multiply by (1 - q^(n+i)), truncated at deg
        let s = n + i;
        if s <= deg {
            for k in (s..=deg).rev() {
                c[k] -= c[k - s];
            }
        }
        // divide by (1 - q^i)
        for k in i..=deg {
            c[k] += c[k - i];
        }
    }
    let total: f64 = c.iter().map(|&v| v as f64).sum();
    let k0 = u.ceil().max(0.0) as usize;
    if k0 > deg {
        return Some(0.0);
    }
    let tail: f64 = c[k0..].iter().map(|&v| v as f64).sum();
    Some(tail / total)
}

/// Largest sample size per arm [`hodges_lehmann`] uses before thinning.
pub const HL_MAX_PER_ARM: usize = 2000;

/// Hodges–Lehmann shift estimate: the median of all pairwise differences `candidate[j] -
/// baseline[i]`. Beyond [`HL_MAX_PER_ARM`] values per arm, each arm is thinned deterministically
/// to that many evenly spaced order statistics (its quantiles), which keeps the estimate's
/// error far below the sampling error. NaN for an empty arm; non-finite values are ignored.
pub fn hodges_lehmann(baseline: &[f64], candidate: &[f64]) -> f64 {
    let b = thin(baseline, HL_MAX_PER_ARM);
    let c = thin(candidate, HL_MAX_PER_ARM);
    if b.is_empty() || c.is_empty() {
        return f64::NAN;
    }
    let mut d: Vec<f64> = Vec::with_capacity(b.len() * c.len());
    for &cj in &c {
        for &bi in &b {
            d.push(cj - bi);
        }
    }
    median_in_place(&mut d)
}

/// The result of a Wilcoxon signed-rank test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SrResult {
    /// The sum of the ranks of the positive differences.
    pub r_plus: f64,
    /// Differences that count (the zeros are left out).
    pub n: usize,
    pub z: f64,
    pub p_value: f64,
}

/// Wilcoxon signed-rank test of the paired differences `d` against a zero median, with the
/// normal approximation and the tie correction, zeros left out: exactly
/// `scipy.stats.wilcoxon(d, alternative=..., method="approx")` (`zero_method="wilcox"`, no
/// continuity correction). `Greater` asks whether the differences tend to be positive. NaN
/// p-value when no difference is non-zero; non-finite differences are ignored.
pub fn wilcoxon_signed_rank(d: &[f64], alt: Alternative) -> SrResult {
    let nz: Vec<f64> = d
        .iter()
        .copied()
        .filter(|x| x.is_finite() && *x != 0.0)
        .collect();
    let n = nz.len();
    if n == 0 {
        return SrResult {
            r_plus: f64::NAN,
            n,
            z: f64::NAN,
            p_value: f64::NAN,
        };
    }
    let abs: Vec<f64> = nz.iter().map(|x| x.abs()).collect();
    let (ranks, tie_term) = rank_average(&abs);
    let r_plus: f64 = ranks
        .iter()
        .zip(&nz)
        .filter(|(_, x)| **x > 0.0)
        .map(|(r, _)| r)
        .sum();
    let nf = n as f64;
    let mean = nf * (nf + 1.0) / 4.0;
    let var = nf * (nf + 1.0) * (2.0 * nf + 1.0) / 24.0 - tie_term / 48.0;
    let z = (r_plus - mean) / var.sqrt();
    let p = match alt {
        Alternative::Greater => norm_sf(z),
        Alternative::Less => norm_cdf(z),
        Alternative::TwoSided => 2.0 * norm_sf(z.abs()),
    };
    SrResult {
        r_plus,
        n,
        z,
        p_value: p.clamp(0.0, 1.0),
    }
}

/// The one-sample Hodges–Lehmann estimate: the median of the Walsh averages `(d[i] + d[j]) / 2`,
/// `i <= j`, the location estimate that goes with the signed-rank test. NaN when `d` has no
/// finite value; beyond [`HL_MAX_PER_ARM`] values, `d` is thinned as in [`hodges_lehmann`].
pub fn hodges_lehmann_paired(d: &[f64]) -> f64 {
    let d = thin(d, HL_MAX_PER_ARM);
    if d.is_empty() {
        return f64::NAN;
    }
    let mut w = Vec::with_capacity(d.len() * (d.len() + 1) / 2);
    for i in 0..d.len() {
        for j in i..d.len() {
            w.push(0.5 * (d[i] + d[j]));
        }
    }
    median_in_place(&mut w)
}

/// Sorted finite values, thinned to at most `max` evenly spaced order statistics.
fn thin(v: &[f64], max: usize) -> Vec<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    if s.len() <= max {
        return s;
    }
    (0..max)
        .map(|k| quantile_sorted(&s, (k as f64 + 0.5) / max as f64))
        .collect()
}

fn median_in_place(d: &mut [f64]) -> f64 {
    let n = d.len();
    let mid = n / 2;
    let (_, hi, _) = d.select_nth_unstable_by(mid, f64::total_cmp);
    let hi = *hi;
    if n % 2 == 1 {
        hi
    } else {
        let lo = d[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        0.5 * (lo + hi)
    }
}

/// Quantile of sorted data with linear interpolation (numpy's default, "type 7").
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Summary of a continuous sample.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleSummary {
    pub n: usize,
    #[serde(deserialize_with = "crate::nan_if_null")]
    pub mean: f64,
    #[serde(deserialize_with = "crate::nan_if_null")]
    pub median: f64,
    #[serde(deserialize_with = "crate::nan_if_null")]
    pub p90: f64,
    #[serde(deserialize_with = "crate::nan_if_null")]
    pub p99: f64,
}

/// Summarise the finite values of a sample.
pub fn summarize(v: &[f64]) -> SampleSummary {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let mean = if n == 0 {
        f64::NAN
    } else {
        s.iter().sum::<f64>() / n as f64
    };
    SampleSummary {
        n,
        mean,
        median: quantile_sorted(&s, 0.5),
        p90: quantile_sorted(&s, 0.9),
        p99: quantile_sorted(&s, 0.99),
    }
}

fn ln_choose(n: u64, k: u64) -> f64 {
    ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0)
}

/// Fisher's exact test on the 2×2 table `[[a, b], [c, d]]`, as `scipy.stats.fisher_exact`:
/// `Greater` tests an odds ratio above 1 (a is large); two-sided sums the probabilities of all
/// tables no more likely than the observed one (relative tolerance 1e-7).
pub fn fisher_exact(table: [[u64; 2]; 2], alt: Alternative) -> f64 {
    let [[a, b], [c, d]] = table;
    let r1 = a + b;
    let c1 = a + c;
    let n = a + b + c + d;
    if n == 0 || r1 == 0 || c1 == 0 || r1 == n || c1 == n {
        return 1.0;
    }
    let lo = c1.saturating_sub(n - r1);
    let hi = r1.min(c1);
    let lpmf = |k: u64| ln_choose(r1, k) + ln_choose(n - r1, c1 - k) - ln_choose(n, c1);
    let p = match alt {
        Alternative::Less => (lo..=a).map(|k| lpmf(k).exp()).sum::<f64>(),
        Alternative::Greater => (a..=hi).map(|k| lpmf(k).exp()).sum::<f64>(),
        Alternative::TwoSided => {
            let obs = lpmf(a);
            let cut = obs + (1.0f64 + 1e-7).ln();
            (lo..=hi)
                .map(lpmf)
                .filter(|&l| l <= cut)
                .map(f64::exp)
                .sum::<f64>()
        }
    };
    p.clamp(0.0, 1.0)
}

/// Pooled two-proportion z-test of candidate rate `e1/n1` against baseline rate `e2/n2`
/// (`Greater`: candidate rate higher). Returns (z, p-value).
pub fn two_proportion_z(e1: u64, n1: u64, e2: u64, n2: u64, alt: Alternative) -> (f64, f64) {
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let p1 = e1 as f64 / n1f;
    let p2 = e2 as f64 / n2f;
    let pooled = (e1 + e2) as f64 / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    if se == 0.0 || !se.is_finite() {
        return (0.0, 1.0);
    }
    let z = (p1 - p2) / se;
    let p = match alt {
        Alternative::Greater => norm_sf(z),
        Alternative::Less => norm_cdf(z),
        Alternative::TwoSided => 2.0 * norm_sf(z.abs()),
    };
    (z, p.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfc_known_values() {
        let cases = [
            (0.0, 1.0),
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_13),
            (2.0, 0.004_677_734_981_047_266),
            (3.0, 2.209_049_699_858_544e-5),
            (5.0, 1.537_459_794_428_034_8e-12),
            (-1.0, 1.842_700_792_949_715),
        ];
        for (x, want) in cases {
            let got = erfc(x);
            assert!(
                (got - want).abs() <= 1e-11 * want,
                "erfc({x}) = {got}, want {want}"
            );
        }
        assert!((norm_ppf(0.975) - 1.959_963_984_540_054).abs() < 1e-9);
        assert!((ln_gamma(10.0) - 362_880f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn hodges_lehmann_small_examples() {
        // pairwise differences of [1,2,3] vs [2,4]: 1,0,-1,3,2,1 -> median 1
        assert_eq!(hodges_lehmann(&[1.0, 2.0, 3.0], &[2.0, 4.0]), 1.0);
        // pure shift is recovered exactly
        let b: Vec<f64> = (0..50).map(|i| (i * 7 % 13) as f64).collect();
        let c: Vec<f64> = b.iter().map(|v| v + 2.5).collect();
        assert_eq!(hodges_lehmann(&b, &c), 2.5);
        assert!(hodges_lehmann(&[], &[1.0]).is_nan());
    }

    #[test]
    fn hodges_lehmann_thins_large_samples_deterministically() {
        let b: Vec<f64> = (0..5000).map(|i| i as f64 / 10.0).collect();
        let c: Vec<f64> = b.iter().map(|v| v + 3.0).collect();
        let a = hodges_lehmann(&b, &c);
        assert!((a - 3.0).abs() < 0.05, "{a}");
        assert_eq!(a, hodges_lehmann(&b, &c));
    }

    #[test]
    fn exact_distribution_small_case() {
        // m = n = 2: U in {0,1,2,2,3,4} counts 1,1,2,1,1 over 6 arrangements
        assert!((exact_u_sf(4.0, 2, 2).unwrap() - 1.0 / 6.0).abs() < 1e-15);
        assert!((exact_u_sf(2.0, 2, 2).unwrap() - 4.0 / 6.0).abs() < 1e-15);
        assert!((exact_u_sf(0.0, 2, 2).unwrap() - 1.0).abs() < 1e-15);
    }

    #[test]
    fn proportions() {
        let (z, p) = two_proportion_z(50, 1000, 5, 1000, Alternative::Greater);
        assert!(z > 6.0 && p < 1e-9, "{z} {p}");
        let (_, p) = two_proportion_z(5, 1000, 5, 1000, Alternative::Greater);
        assert!((p - 0.5).abs() < 1e-12);
        // symmetric two-sided Fisher table with identical rows has p = 1
        assert!((fisher_exact([[3, 7], [3, 7]], Alternative::TwoSided) - 1.0).abs() < 1e-12);
        let g = fisher_exact([[8, 2], [1, 5]], Alternative::Greater);
        let l = fisher_exact([[8, 2], [1, 5]], Alternative::Less);
        assert!(g < 0.05 && l > 0.95, "{g} {l}");
    }
}
