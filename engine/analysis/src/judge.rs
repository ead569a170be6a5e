//! The fixed-horizon canary judge, with the semantics of Kayenta's `NetflixACAJudge`.
//!
//! Per metric:
//! - continuous metrics (latency, CPU, ...): Mann-Whitney U of candidate against baseline —
//!   one-sided in the bad direction for `Increase`/`Decrease`, two-sided for `Either` — and the
//!   Hodges–Lehmann shift as the effect, made relative by the baseline median;
//! - proportion metrics (error rates): events/total per arm compared as proportions — Fisher's
//!   exact test when an expected cell count is below 5, otherwise the pooled two-proportion
//!   z-test; effect = rate difference, relative = difference / baseline rate.
//!
//! A metric fails when the difference is significant at `confidence` in the bad direction
//! **and** the effect exceeds the tolerance (relative `tolerance` and absolute
//! `abs_tolerance`); significant but tolerated differences are `HighButWithinTolerance`, which
//! counts as passing. Score = 100 × weighted share of passing metrics (a metric without enough
//! data does not pass). Outcome: `Fail` if a critical metric fails, or if the score could not
//! reach `marginal_threshold` even if every metric still lacking data passed; otherwise
//! `Inconclusive` if any metric lacks data; otherwise `Pass` (score ≥ `pass_threshold`),
//! `Marginal` (score ≥ `marginal_threshold`) or `Fail`.

use crate::stats::{
    fisher_exact, hodges_lehmann, hodges_lehmann_paired, mann_whitney, summarize, two_proportion_z,
    wilcoxon_signed_rank, Alternative, SampleSummary,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetricKind {
    /// Samples of a continuous quantity (latency, CPU).
    Continuous,
    /// Event counts out of totals (errors out of requests).
    Proportion,
}

/// Which change is bad.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Bad if the candidate is higher (latency, errors).
    Increase,
    /// Bad if the candidate is lower (throughput, success rate).
    Decrease,
    /// Bad either way.
    Either,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub kind: MetricKind,
    pub direction: Direction,
    /// A failing critical metric fails the whole canary.
    pub critical: bool,
    pub weight: f64,
    /// Relative effect allowed in the bad direction (0.25 = 25 %).
    pub tolerance: f64,
    /// Absolute effect allowed in the bad direction (units of the metric; for proportions, a
    /// rate difference such as 0.005 = half a percentage point). Default 0.
    pub abs_tolerance: f64,
    /// Minimum samples per arm (continuous) or minimum total per arm (proportions).
    pub min_samples: u64,
    /// Sequential mode only: the effect size, on the test's scale (log ratio for continuous
    /// metrics, rate difference for proportions), where the mixture test is most powerful.
    /// Default: ln(1 + tolerance) (at least 0.05) for continuous metrics, max(abs_tolerance,
    /// 0.02) for proportions.
    pub mixture_scale: Option<f64>,
}

impl Metric {
    fn new(name: &str, kind: MetricKind, min_samples: u64) -> Self {
        Metric {
            name: name.to_string(),
            kind,
            direction: Direction::Increase,
            critical: false,
            weight: 1.0,
            tolerance: 0.25,
            abs_tolerance: 0.0,
            min_samples,
            mixture_scale: None,
        }
    }
    /// A continuous metric, bad when higher, weight 1, tolerance 25 %, at least 50 samples per arm.
    pub fn continuous(name: &str) -> Self {
        Self::new(name, MetricKind::Continuous, 50)
    }
    /// A proportion metric, bad when higher, weight 1, tolerance 25 %, at least 200 per arm.
    pub fn proportion(name: &str) -> Self {
        Self::new(name, MetricKind::Proportion, 200)
    }
    pub fn direction(mut self, d: Direction) -> Self {
        self.direction = d;
        self
    }
    pub fn critical(mut self, c: bool) -> Self {
        self.critical = c;
        self
    }
    pub fn weight(mut self, w: f64) -> Self {
        self.weight = w;
        self
    }
    pub fn tolerance(mut self, t: f64) -> Self {
        self.tolerance = t;
        self
    }
    pub fn abs_tolerance(mut self, t: f64) -> Self {
        self.abs_tolerance = t;
        self
    }
    pub fn min_samples(mut self, n: u64) -> Self {
        self.min_samples = n;
        self
    }
    pub fn mixture_scale(mut self, s: f64) -> Self {
        self.mixture_scale = Some(s);
        self
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgeConfig {
    /// 1 − significance level; Kayenta's default 0.98.
    pub confidence: f64,
    /// Score at or above which the canary passes (95).
    pub pass_threshold: f64,
    /// Score at or above which the canary is marginal (75).
    pub marginal_threshold: f64,
    pub metrics: Vec<Metric>,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            confidence: 0.98,
            pass_threshold: 95.0,
            marginal_threshold: 75.0,
            metrics: Vec::new(),
        }
    }
}

impl JudgeConfig {
    pub fn with_metrics(metrics: Vec<Metric>) -> Self {
        JudgeConfig {
            metrics,
            ..Default::default()
        }
    }
    /// Significance level α = 1 − confidence.
    pub fn alpha(&self) -> f64 {
        1.0 - self.confidence
    }
}

/// Events out of a total (errors out of requests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub events: u64,
    pub total: u64,
}

impl Counts {
    pub fn new(events: u64, total: u64) -> Self {
        Counts { events, total }
    }
    pub fn rate(&self) -> f64 {
        if self.total == 0 {
            f64::NAN
        } else {
            self.events as f64 / self.total as f64
        }
    }
}

/// Observed data for one metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetricData {
    Continuous {
        baseline: Vec<f64>,
        candidate: Vec<f64>,
    },
    Counts {
        baseline: Counts,
        candidate: Counts,
    },
    /// A continuous metric observed as pairs taken under the same conditions: `baseline[i]` and
    /// `candidate[i]` are, e.g., the two arms' median latencies of the same time window. Judged
    /// by the Wilcoxon signed-rank test of the log ratios, so what both arms share (a loaded
    /// machine, a burst) cancels and an arm whose samples come from a different moment (a 5 %
    /// canary) is not compared with another moment. Values must be positive; pairs with a value
    /// that is not are ignored. Needs [`MIN_PAIRS`] pairs.
    Paired {
        baseline: Vec<f64>,
        candidate: Vec<f64>,
    },
}

/// The pairs of [`MetricData::Paired`] data that count: both values finite and positive.
fn usable_pairs<'a>(
    baseline: &'a [f64],
    candidate: &'a [f64],
) -> impl Iterator<Item = (f64, f64)> + 'a {
    baseline
        .iter()
        .zip(candidate)
        .filter(|(b, c)| b.is_finite() && c.is_finite() && **b > 0.0 && **c > 0.0)
        .map(|(b, c)| (*b, *c))
}

/// `ln(candidate / baseline)` of every usable pair of [`MetricData::Paired`] data: what the
/// signed-rank test of a paired metric ranks.
pub fn log_ratios(baseline: &[f64], candidate: &[f64]) -> Vec<f64> {
    usable_pairs(baseline, candidate)
        .map(|(b, c)| (c / b).ln())
        .collect()
}

/// The fewest pairs a [`MetricData::Paired`] metric is judged on: with 6 pairs all worse, the
/// one-sided signed-rank test reaches p = 0.014.
pub const MIN_PAIRS: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Summary {
    Continuous(SampleSummary),
    Proportion {
        events: u64,
        total: u64,
        #[serde(deserialize_with = "crate::nan_if_null")]
        rate: f64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Effect {
    /// Hodges–Lehmann shift (candidate − baseline) or rate difference.
    #[serde(deserialize_with = "crate::nan_if_null")]
    pub shift: f64,
    /// Shift relative to the baseline median or baseline rate.
    #[serde(deserialize_with = "crate::nan_if_null")]
    pub relative: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TestUsed {
    MannWhitney,
    WilcoxonSignedRank,
    TwoProportionZ,
    FisherExact,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetricStatus {
    Pass,
    Fail,
    /// Significantly worse, but within the tolerance: counts as passing.
    HighButWithinTolerance,
    NotEnoughData,
}

impl MetricStatus {
    pub fn passes(self) -> bool {
        matches!(
            self,
            MetricStatus::Pass | MetricStatus::HighButWithinTolerance
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricVerdict {
    pub name: String,
    pub critical: bool,
    pub weight: f64,
    pub baseline: Option<Summary>,
    pub candidate: Option<Summary>,
    pub effect: Option<Effect>,
    pub test: TestUsed,
    pub p_value: Option<f64>,
    /// The significance threshold the p-value is compared with (α = 1 − confidence).
    pub threshold: f64,
    pub status: MetricStatus,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Pass,
    Marginal,
    Fail,
    /// Not enough evidence yet: never a pass.
    Inconclusive,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// 100 × weighted share of passing metrics (metrics lacking data count as not passing).
    #[serde(deserialize_with = "crate::nan_if_null")]
    pub score: f64,
    pub outcome: Outcome,
    pub reason: String,
    pub per_metric: Vec<MetricVerdict>,
}

/// Judge a canary on fixed data: see the module documentation for the rules.
pub fn judge(config: &JudgeConfig, data: &BTreeMap<String, MetricData>) -> Verdict {
    let alpha = config.alpha();
    let per_metric: Vec<MetricVerdict> = config
        .metrics
        .iter()
        .map(|m| judge_metric(m, data.get(&m.name), alpha))
        .collect();
    let total: f64 = per_metric.iter().map(|v| v.weight).sum();
    let weight_where = |f: &dyn Fn(&MetricVerdict) -> bool| -> f64 {
        per_metric.iter().filter(|v| f(v)).map(|v| v.weight).sum()
    };
    let pct = |w: f64| if total > 0.0 { 100.0 * w / total } else { 0.0 };
    let score = pct(weight_where(&|v| v.status.passes()));
    let best = pct(weight_where(&|v| v.status != MetricStatus::Fail));
    let missing: Vec<&str> = per_metric
        .iter()
        .filter(|v| v.status == MetricStatus::NotEnoughData)
        .map(|v| v.name.as_str())
        .collect();
    let critical: Vec<&str> = per_metric
        .iter()
        .filter(|v| v.critical && v.status == MetricStatus::Fail)
        .map(|v| v.name.as_str())
        .collect();
    let (outcome, reason) = if config.metrics.is_empty() {
        (Outcome::Inconclusive, "no metrics configured".to_string())
    } else if !critical.is_empty() {
        (
            Outcome::Fail,
            format!("critical metric failed: {}", critical.join(", ")),
        )
    } else if best < config.marginal_threshold {
        (
            Outcome::Fail,
            format!(
                "score cannot reach the marginal threshold {} (at most {best:.1})",
                config.marginal_threshold
            ),
        )
    } else if !missing.is_empty() {
        (
            Outcome::Inconclusive,
            format!("not enough data yet for: {}", missing.join(", ")),
        )
    } else if score >= config.pass_threshold {
        (
            Outcome::Pass,
            format!(
                "score {score:.1} >= pass threshold {}",
                config.pass_threshold
            ),
        )
    } else if score >= config.marginal_threshold {
        (
            Outcome::Marginal,
            format!(
                "score {score:.1} >= marginal threshold {}",
                config.marginal_threshold
            ),
        )
    } else {
        (
            Outcome::Fail,
            format!(
                "score {score:.1} < marginal threshold {}",
                config.marginal_threshold
            ),
        )
    };
    Verdict {
        score,
        outcome,
        reason,
        per_metric,
    }
}

fn not_enough(m: &Metric, alpha: f64, reason: String) -> MetricVerdict {
    MetricVerdict {
        name: m.name.clone(),
        critical: m.critical,
        weight: m.weight,
        baseline: None,
        candidate: None,
        effect: None,
        test: TestUsed::None,
        p_value: None,
        threshold: alpha,
        status: MetricStatus::NotEnoughData,
        reason,
    }
}

fn relative(shift: f64, base: f64) -> f64 {
    if base != 0.0 {
        shift / base.abs()
    } else if shift == 0.0 {
        0.0
    } else {
        shift.signum() * f64::INFINITY
    }
}

/// Does a relative/absolute effect exceed the tolerance in a bad direction?
/// `x` to three decimals, for messages.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn exceeds(m: &Metric, e: Effect) -> bool {
    let up = e.relative > m.tolerance && e.shift > m.abs_tolerance;
    let down = e.relative < -m.tolerance && e.shift < -m.abs_tolerance;
    match m.direction {
        Direction::Increase => up,
        Direction::Decrease => down,
        Direction::Either => up || down,
    }
}

/// Is the significant difference in a bad direction (for `Either`, any direction)?
fn bad_side(m: &Metric, e: Effect) -> bool {
    match m.direction {
        Direction::Increase => e.shift > 0.0,
        Direction::Decrease => e.shift < 0.0,
        Direction::Either => e.shift != 0.0,
    }
}

fn alternative(d: Direction) -> Alternative {
    match d {
        Direction::Increase => Alternative::Greater,
        Direction::Decrease => Alternative::Less,
        Direction::Either => Alternative::TwoSided,
    }
}

fn judge_metric(m: &Metric, data: Option<&MetricData>, alpha: f64) -> MetricVerdict {
    let min = m.min_samples.max(2);
    let (baseline, candidate, effect, test, p) = match (m.kind, data) {
        (_, None) => return not_enough(m, alpha, "no data".into()),
        (
            MetricKind::Continuous,
            Some(MetricData::Continuous {
                baseline,
                candidate,
            }),
        ) => {
            let b: Vec<f64> = baseline.iter().copied().filter(|v| v.is_finite()).collect();
            let c: Vec<f64> = candidate
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            let (sb, sc) = (summarize(&b), summarize(&c));
            if (b.len() as u64) < min || (c.len() as u64) < min {
                let mut v = not_enough(
                    m,
                    alpha,
                    format!(
                        "{} baseline and {} candidate samples; need {min} each",
                        b.len(),
                        c.len()
                    ),
                );
                v.baseline = Some(Summary::Continuous(sb));
                v.candidate = Some(Summary::Continuous(sc));
                return v;
            }
            // candidate first: scipy's `greater` then means "candidate stochastically greater"
            let mw = mann_whitney(&c, &b, alternative(m.direction));
            let shift = hodges_lehmann(&b, &c);
            let effect = Effect {
                shift,
                relative: relative(shift, sb.median),
            };
            (
                Summary::Continuous(sb),
                Summary::Continuous(sc),
                effect,
                TestUsed::MannWhitney,
                mw.p_value,
            )
        }
        (
            MetricKind::Continuous,
            Some(MetricData::Paired {
                baseline,
                candidate,
            }),
        ) => {
            let (b, c): (Vec<f64>, Vec<f64>) = usable_pairs(baseline, candidate).unzip();
            let (sb, sc) = (summarize(&b), summarize(&c));
            if b.len() < MIN_PAIRS {
                let mut v = not_enough(m, alpha, format!("{} pairs; need {MIN_PAIRS}", b.len()));
                v.baseline = Some(Summary::Continuous(sb));
                v.candidate = Some(Summary::Continuous(sc));
                return v;
            }
            let log_ratios = log_ratios(&b, &c);
            let differences: Vec<f64> = b.iter().zip(&c).map(|(b, c)| c - b).collect();
            let sr = wilcoxon_signed_rank(&log_ratios, alternative(m.direction));
            let effect = Effect {
                shift: hodges_lehmann_paired(&differences),
                relative: hodges_lehmann_paired(&log_ratios).exp_m1(),
            };
            // All pairs equal: no evidence of any difference.
            let p = if sr.n == 0 { 1.0 } else { sr.p_value };
            (
                Summary::Continuous(sb),
                Summary::Continuous(sc),
                effect,
                TestUsed::WilcoxonSignedRank,
                p,
            )
        }
        (
            MetricKind::Proportion,
            Some(MetricData::Counts {
                baseline,
                candidate,
            }),
        ) => {
            let (b, c) = (*baseline, *candidate);
            let summary = |k: Counts| Summary::Proportion {
                events: k.events,
                total: k.total,
                rate: k.rate(),
            };
            if b.total < min || c.total < min || b.events > b.total || c.events > c.total {
                let mut v = not_enough(
                    m,
                    alpha,
                    format!(
                        "{} baseline and {} candidate observations; need {min} each",
                        b.total, c.total
                    ),
                );
                v.baseline = Some(summary(b));
                v.candidate = Some(summary(c));
                return v;
            }
            let shift = c.rate() - b.rate();
            let effect = Effect {
                shift,
                relative: relative(shift, b.rate()),
            };
            let alt = alternative(m.direction);
            // expected cell counts under the pooled rate
            let n = (b.total + c.total) as f64;
            let ev = (b.events + c.events) as f64;
            let min_expected = [b.total as f64, c.total as f64]
                .iter()
                .flat_map(|t| [t * ev / n, t * (n - ev) / n])
                .fold(f64::INFINITY, f64::min);
            let (test, p) = if min_expected < 5.0 {
                let table = [
                    [c.events, c.total - c.events],
                    [b.events, b.total - b.events],
                ];
                (TestUsed::FisherExact, fisher_exact(table, alt))
            } else {
                (
                    TestUsed::TwoProportionZ,
                    two_proportion_z(c.events, c.total, b.events, b.total, alt).1,
                )
            };
            (summary(b), summary(c), effect, test, p)
        }
        (kind, Some(_)) => {
            return not_enough(
                m,
                alpha,
                format!("data of the wrong kind for a {kind:?} metric"),
            )
        }
    };
    let significant = p < alpha && bad_side(m, effect);
    let over = exceeds(m, effect);
    let (status, reason) = match (significant, over) {
        (true, true) => (
            MetricStatus::Fail,
            format!(
                "significant (p = {p:.3e} < {alpha:.3}) and effect {:+.1}% exceeds tolerance {:.1}%",
                100.0 * effect.relative,
                100.0 * m.tolerance
            ),
        ),
        (true, false) => (
            MetricStatus::HighButWithinTolerance,
            if m.abs_tolerance > 0.0 && effect.relative.abs() > m.tolerance {
                // Over the relative tolerance, but the absolute difference is too small to
                // matter (1 ms more on 2 ms is +50 %).
                format!(
                    "significant (p = {p:.3e}) but effect {:+.1}% ({:+} in the metric's unit) is within the absolute tolerance {}",
                    100.0 * effect.relative,
                    round3(effect.shift),
                    round3(m.abs_tolerance)
                )
            } else {
                format!(
                    "significant (p = {p:.3e}) but effect {:+.1}% is within tolerance {:.1}%",
                    100.0 * effect.relative,
                    100.0 * m.tolerance
                )
            },
        ),
        (false, _) => (
            MetricStatus::Pass,
            format!("no significant regression (p = {p:.3e} >= {alpha:.3})"),
        ),
    };
    MetricVerdict {
        name: m.name.clone(),
        critical: m.critical,
        weight: m.weight,
        baseline: Some(baseline),
        candidate: Some(candidate),
        effect: Some(effect),
        test,
        p_value: Some(p),
        threshold: alpha,
        status,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn lognormal(seed: u64, n: usize, median: f64) -> Vec<f64> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| r.lognormal(median, 0.5)).collect()
    }

    /// A progressive canary's arms: 20 windows in which the machine grows slower (3 ms to 12
    /// ms); the baseline answers 40 requests a window, the candidate 2 early on and 40 late
    /// (its share grows step by step). `factor` is the candidate's real slowdown.
    fn drifting_windows(factor: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut r = Rng::new(11);
        let (mut b, mut c, mut bm, mut cm) = (vec![], vec![], vec![], vec![]);
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        for w in 0..20 {
            let load = 3.0 + 9.0 * w as f64 / 19.0;
            let nb: Vec<f64> = (0..40).map(|_| r.lognormal(load, 0.3)).collect();
            let nc: Vec<f64> = (0..if w < 10 { 2 } else { 40 })
                .map(|_| r.lognormal(load * factor, 0.3))
                .collect();
            bm.push(median(nb.clone()));
            cm.push(median(nc.clone()));
            b.extend(nb);
            c.extend(nc);
        }
        (b, c, bm, cm)
    }

    fn latency_only(data: MetricData) -> MetricVerdict {
        let cfg = JudgeConfig::with_metrics(vec![Metric::continuous("latency")
            .direction(Direction::Increase)
            .tolerance(0.25)]);
        let mut d = BTreeMap::new();
        d.insert("latency".to_string(), data);
        judge(&cfg, &d).per_metric.remove(0)
    }

    #[test]
    fn paired_windows_do_not_blame_the_candidate_for_the_moment_it_ran_in() {
        let (b, c, bm, cm) = drifting_windows(1.0);
        let per_request = latency_only(MetricData::Continuous {
            baseline: b,
            candidate: c,
        });
        assert_eq!(per_request.status, MetricStatus::Fail, "{per_request:?}");
        let paired = latency_only(MetricData::Paired {
            baseline: bm,
            candidate: cm,
        });
        assert_eq!(paired.status, MetricStatus::Pass, "{paired:?}");
        assert_eq!(paired.test, TestUsed::WilcoxonSignedRank);
    }

    #[test]
    fn paired_windows_still_catch_a_real_slowdown() {
        let (_, _, bm, cm) = drifting_windows(1.5);
        let v = latency_only(MetricData::Paired {
            baseline: bm,
            candidate: cm,
        });
        assert_eq!(v.status, MetricStatus::Fail, "{v:?}");
        let e = v.effect.unwrap();
        assert!((0.3..0.8).contains(&e.relative), "{e:?}");
    }

    #[test]
    fn too_few_pairs_are_not_enough_data() {
        let v = latency_only(MetricData::Paired {
            baseline: vec![1.0; MIN_PAIRS - 1],
            candidate: vec![9.0; MIN_PAIRS - 1],
        });
        assert_eq!(v.status, MetricStatus::NotEnoughData, "{v:?}");
        let v = latency_only(MetricData::Paired {
            baseline: vec![1.0; MIN_PAIRS],
            candidate: vec![9.0; MIN_PAIRS],
        });
        assert_eq!(v.status, MetricStatus::Fail, "{v:?}");
    }

    fn config() -> JudgeConfig {
        JudgeConfig::with_metrics(vec![
            Metric::continuous("latency"),
            Metric::proportion("errors")
                .critical(true)
                .abs_tolerance(0.002),
            Metric::continuous("cpu").weight(0.5),
        ])
    }

    fn data(lat_factor: f64, cand_errors: u64, n: usize) -> BTreeMap<String, MetricData> {
        let mut d = BTreeMap::new();
        d.insert(
            "latency".into(),
            MetricData::Continuous {
                baseline: lognormal(1, n, 100.0),
                candidate: lognormal(2, n, 100.0 * lat_factor),
            },
        );
        d.insert(
            "errors".into(),
            MetricData::Counts {
                baseline: Counts::new(5, 1000),
                candidate: Counts::new(cand_errors, 1000),
            },
        );
        d.insert(
            "cpu".into(),
            MetricData::Continuous {
                baseline: lognormal(3, n, 0.4),
                candidate: lognormal(4, n, 0.4),
            },
        );
        d
    }

    #[test]
    fn identical_data_passes() {
        let cfg = config();
        let mut d = data(1.0, 5, 500);
        // literally identical samples
        if let Some(MetricData::Continuous {
            baseline,
            candidate,
        }) = d.get_mut("latency")
        {
            *candidate = baseline.clone();
        }
        let v = judge(&cfg, &d);
        assert_eq!(v.outcome, Outcome::Pass, "{v:#?}");
        assert_eq!(v.score, 100.0);
        let lat = &v.per_metric[0];
        assert_eq!(lat.effect.unwrap().shift, 0.0);
        assert!(lat.p_value.unwrap() > 0.4);
    }

    #[test]
    fn independent_same_distribution_passes() {
        let v = judge(&config(), &data(1.0, 6, 500));
        assert_eq!(v.outcome, Outcome::Pass, "{v:#?}");
    }

    #[test]
    fn shifted_latency_fails() {
        let v = judge(&config(), &data(1.6, 5, 500));
        let lat = &v.per_metric[0];
        assert_eq!(lat.status, MetricStatus::Fail, "{lat:#?}");
        assert!(lat.effect.unwrap().relative > 0.4);
        // 1 of 2.5 weight fails: score 60 < 75
        assert!((v.score - 60.0).abs() < 1e-9);
        assert_eq!(v.outcome, Outcome::Fail);
    }

    #[test]
    fn small_significant_shift_is_within_tolerance() {
        let v = judge(&config(), &data(1.12, 5, 3000));
        let lat = &v.per_metric[0];
        assert_eq!(lat.status, MetricStatus::HighButWithinTolerance, "{lat:#?}");
        assert_eq!(v.outcome, Outcome::Pass);
    }

    #[test]
    fn a_large_relative_but_small_absolute_shift_says_which_tolerance_held() {
        // Latency 60 % up on a 100 ms median, but the absolute tolerance is 100 ms.
        let mut cfg = config();
        cfg.metrics[0].abs_tolerance = 100.0;
        let v = judge(&cfg, &data(1.6, 5, 500));
        let lat = &v.per_metric[0];
        assert_eq!(lat.status, MetricStatus::HighButWithinTolerance, "{lat:#?}");
        assert!(lat.effect.unwrap().relative > 0.4);
        assert!(
            lat.reason.contains("within the absolute tolerance 100"),
            "{}",
            lat.reason
        );
        // Within the relative tolerance, the message says that one.
        let v = judge(&config(), &data(1.12, 5, 3000));
        assert!(
            v.per_metric[0].reason.contains("within tolerance 25.0%"),
            "{}",
            v.per_metric[0].reason
        );
    }

    #[test]
    fn latency_decrease_is_not_a_failure_for_increase_metrics() {
        let v = judge(&config(), &data(0.5, 5, 500));
        assert_eq!(v.per_metric[0].status, MetricStatus::Pass);
        let mut cfg = config();
        cfg.metrics[0].direction = Direction::Either;
        assert_eq!(
            judge(&cfg, &data(0.5, 5, 500)).per_metric[0].status,
            MetricStatus::Fail
        );
        cfg.metrics[0].direction = Direction::Decrease;
        assert_eq!(
            judge(&cfg, &data(0.5, 5, 500)).per_metric[0].status,
            MetricStatus::Fail
        );
    }

    #[test]
    fn too_little_data_is_inconclusive_never_pass() {
        let v = judge(&config(), &data(1.0, 5, 20));
        assert_eq!(v.outcome, Outcome::Inconclusive, "{v:#?}");
        assert_eq!(v.per_metric[0].status, MetricStatus::NotEnoughData);
        let mut d = data(1.0, 5, 500);
        d.remove("cpu");
        assert_eq!(judge(&config(), &d).outcome, Outcome::Inconclusive);
    }

    #[test]
    fn critical_metric_failure_fails_the_canary() {
        let v = judge(&config(), &data(1.0, 50, 500));
        let e = &v.per_metric[1];
        assert_eq!(e.status, MetricStatus::Fail, "{e:#?}");
        assert_eq!(e.test, TestUsed::TwoProportionZ);
        // 1.5 of 2.5 weight passes: score 60, but it is the critical metric that decides
        assert_eq!(v.outcome, Outcome::Fail);
        assert!(v.reason.contains("critical"), "{}", v.reason);
        // even when other metrics still lack data
        let v = judge(&config(), &data(1.0, 50, 20));
        assert_eq!(v.outcome, Outcome::Fail);
    }

    #[test]
    fn small_counts_use_fisher() {
        let mut d = data(1.0, 5, 500);
        d.insert(
            "errors".into(),
            MetricData::Counts {
                baseline: Counts::new(0, 300),
                candidate: Counts::new(9, 300),
            },
        );
        let v = judge(&config(), &d);
        let e = &v.per_metric[1];
        assert_eq!(e.test, TestUsed::FisherExact);
        assert_eq!(e.status, MetricStatus::Fail, "{e:#?}");
        assert!(e.effect.unwrap().relative.is_infinite());
    }

    #[test]
    fn marginal_score() {
        let cfg = JudgeConfig::with_metrics(vec![
            Metric::continuous("latency").weight(1.0),
            Metric::continuous("cpu").weight(4.0),
        ]);
        let mut d = data(1.6, 5, 500);
        d.remove("errors");
        let v = judge(&cfg, &d);
        assert!((v.score - 80.0).abs() < 1e-9);
        assert_eq!(v.outcome, Outcome::Marginal);
    }
}
