//! Sequential canary judgement: look at the data as it arrives, stop early both ways, and keep
//! the false-alarm rate bounded across all looks and all metrics.
//!
//! # The test
//!
//! For each metric we track an effect θ and its estimate θ̂ with (estimated) variance V:
//!
//! - continuous metrics (latency): θ = E[ln candidate] − E[ln baseline], the log ratio of
//!   geometric means (for lognormal latencies, the log ratio of medians); θ̂ is the difference
//!   of the running means of the logs and V = s²_c/n_c + s²_b/n_b (Welford variances).
//!   Values must be positive; values ≤ 0 are clamped to 1e-12 before the log;
//! - proportions (error rates): θ = p_c − p_b, θ̂ the difference of observed rates and
//!   V = p̃_c(1−p̃_c)/n_c + p̃_b(1−p̃_b)/n_b with p̃ = (events+1)/(total+2) (so zero observed
//!   events do not claim zero variance).
//!
//! Treating θ̂ as Gaussian, the mixture sequential probability ratio test (mSPRT, Robbins 1970;
//! Johari, Koomen, Pekelis & Walsh 2017) of H0: θ = θ0 with a N(θ0, τ²) mixture over the
//! alternative has the likelihood ratio
//!
//! ```text
//!   Λ(θ0) = sqrt(V / (V + τ²)) · exp( τ² (θ̂ − θ0)² / (2 V (V + τ²)) )
//! ```
//!
//! which is a nonnegative martingale under H0, so by Ville's inequality P(∃ look: Λ ≥ 1/α) ≤ α.
//! The always-valid p-value is the running minimum of 1/Λ(0) over the looks. Inverting the test
//! for every θ0 gives the normal-mixture confidence sequence (Howard, Ramdas, McAuliffe &
//! Sekhon 2021, eq. (14) in the sub-Gaussian case)
//!
//! ```text
//!   θ̂ ± sqrt( V (V + τ²) / τ² · ( 2 ln(1/α) + ln((V + τ²) / V) ) )
//! ```
//!
//! which covers θ at *all* looks simultaneously with probability ≥ 1 − α. Plugging in the
//! estimated variance makes it an asymptotic confidence sequence (Waudby-Smith, Arbour, Sinha,
//! Kennedy & Ramdas 2021, "Time-uniform central limit theory and asymptotic confidence
//! sequences"); `min_samples` keeps the earliest looks out of the small-sample regime. τ (the
//! metric's `mixture_scale`) tunes where the test is most powerful; it defaults to the
//! tolerance.
//!
//! # Decisions
//!
//! With k metrics each metric gets α/k (Bonferroni), α = 1 − confidence. For a metric that is
//! bad when it increases (mirror images for `Decrease`, both for `Either`):
//!
//! - **fail** once the lower bound of θ is above 0 (always-valid significance) *and* the estimate
//!   exceeds the tolerance (Kayenta's rule: significant and beyond tolerance). A candidate no
//!   worse than the baseline trips this with probability ≤ α/k over the whole run, so the
//!   canary's false-failure rate is ≤ α over all looks and all metrics;
//! - **pass** once the upper bound of the bad-direction effect is within the tolerance: for
//!   continuous metrics θ < ln(1 + tolerance); for proportions the upper bound of the contrast
//!   p_c − (1 + tolerance)·p_b is below `abs_tolerance` (a second confidence sequence at the same
//!   level, on the contrast). A candidate worse than the tolerance passes with probability ≤ α/k.
//!
//! The canary fails as soon as a critical metric fails or the failed weight means the score can
//! no longer reach `pass_threshold`; it passes once every metric is decided and the weighted
//! share of passed metrics reaches `pass_threshold`. Both decisions are final. Until then the
//! answer is `Continue` — too little data is never a pass.

use crate::judge::{Counts, Direction, JudgeConfig, Metric, MetricKind};
use crate::stats::norm_ppf;
use serde::{Deserialize, Serialize};

/// Which deployment a sample comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arm {
    Baseline,
    Candidate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeqStatus {
    /// Fewer than `min_samples` in an arm.
    Collecting,
    /// Enough data, but no decision yet.
    Undecided,
    Failed,
    Passed,
}

/// Evidence about one metric at the latest look.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricEvidence {
    pub name: String,
    pub n_baseline: u64,
    pub n_candidate: u64,
    /// Continuous: relative effect (ratio of geometric means − 1). Proportions: rate difference.
    #[serde(deserialize_with = "crate::nan_if_null")]
    pub estimate: f64,
    /// Always-valid confidence bounds on the same scale as `estimate` (level 1 − α/k).
    #[serde(deserialize_with = "crate::nan_if_null")]
    pub lower: f64,
    #[serde(deserialize_with = "crate::nan_if_null")]
    pub upper: f64,
    /// Always-valid p-value for "no difference" (running minimum over the looks).
    #[serde(deserialize_with = "crate::nan_if_null")]
    pub p_value: f64,
    pub status: SeqStatus,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// Keep collecting data.
    Continue,
    /// Stop: the named metric regressed beyond tolerance.
    Fail(String, Vec<MetricEvidence>),
    /// Stop: every metric is shown to be within tolerance.
    Pass(Vec<MetricEvidence>),
}

/// Unknown metric name or data of the wrong kind for the metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObserveError(pub String);

impl std::fmt::Display for ObserveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ObserveError {}

#[derive(Clone, Copy, Debug, Default)]
struct Welford {
    n: u64,
    mean: f64,
    m2: f64,
}

impl Welford {
    fn push(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }
    fn var(&self) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            self.m2 / (self.n - 1) as f64
        }
    }
}

#[derive(Clone, Debug)]
enum Acc {
    /// `d`: the paired differences ln c − ln b when samples come in pairs (`observe_pair`).
    Continuous {
        b: Welford,
        c: Welford,
        d: Welford,
    },
    Counts {
        b: Counts,
        c: Counts,
    },
}

#[derive(Clone, Debug)]
struct State {
    acc: Acc,
    min_p: f64,
    failed: bool,
    passed: bool,
}

/// Radius of the normal-mixture confidence sequence for an estimate with variance `v`.
pub fn mixture_radius(v: f64, tau2: f64, alpha: f64) -> f64 {
    (v * (v + tau2) / tau2 * (2.0 * (1.0 / alpha).ln() + ((v + tau2) / v).ln())).sqrt()
}

/// Always-valid p-value (one look) 1/Λ for H0: θ = 0, capped at 1.
pub fn mixture_p_value(est: f64, v: f64, tau2: f64) -> f64 {
    let ln_lambda = 0.5 * (v / (v + tau2)).ln() + tau2 * est * est / (2.0 * v * (v + tau2));
    (-ln_lambda).exp().min(1.0)
}

/// The sequential judge: feed samples with [`observe`](Self::observe) /
/// [`observe_counts`](Self::observe_counts), ask [`decision`](Self::decision) at each look.
#[derive(Clone, Debug)]
pub struct SequentialJudge {
    config: JudgeConfig,
    alpha_each: f64,
    states: Vec<State>,
    looks: u64,
    decided: Option<Decision>,
}

impl SequentialJudge {
    pub fn new(config: JudgeConfig) -> Self {
        let k = config.metrics.len().max(1) as f64;
        let alpha_each = config.alpha() / k;
        let states = config
            .metrics
            .iter()
            .map(|m| State {
                acc: match m.kind {
                    MetricKind::Continuous => Acc::Continuous {
                        b: Welford::default(),
                        c: Welford::default(),
                        d: Welford::default(),
                    },
                    MetricKind::Proportion => Acc::Counts {
                        b: Counts::default(),
                        c: Counts::default(),
                    },
                },
                min_p: 1.0,
                failed: false,
                passed: false,
            })
            .collect();
        SequentialJudge {
            config,
            alpha_each,
            states,
            looks: 0,
            decided: None,
        }
    }

    pub fn config(&self) -> &JudgeConfig {
        &self.config
    }

    /// Per-metric significance level α/k.
    pub fn alpha_per_metric(&self) -> f64 {
        self.alpha_each
    }

    /// Number of `decision` calls so far.
    pub fn looks(&self) -> u64 {
        self.looks
    }

    fn index(&self, metric: &str) -> Result<usize, ObserveError> {
        self.config
            .metrics
            .iter()
            .position(|m| m.name == metric)
            .ok_or_else(|| ObserveError(format!("unknown metric {metric:?}")))
    }

    /// Add one sample of a continuous metric. Non-finite values are ignored.
    pub fn observe(&mut self, arm: Arm, metric: &str, value: f64) -> Result<(), ObserveError> {
        let i = self.index(metric)?;
        match &mut self.states[i].acc {
            Acc::Continuous { b, c, .. } => {
                if value.is_finite() {
                    let w = if arm == Arm::Baseline { b } else { c };
                    w.push(value.max(1e-12).ln());
                }
                Ok(())
            }
            Acc::Counts { .. } => Err(ObserveError(format!(
                "{metric:?} is a proportion metric; use observe_counts"
            ))),
        }
    }

    /// Add one sample of each arm taken under the same conditions (e.g. batch medians of the
    /// same time window). While every sample comes in pairs, the effect is estimated from the
    /// paired log differences, whose variance leaves out what both arms share (a loaded
    /// machine slows both): θ̂ = mean(ln c − ln b), V = s²_d / n. Non-finite pairs are ignored.
    pub fn observe_pair(
        &mut self,
        metric: &str,
        baseline: f64,
        candidate: f64,
    ) -> Result<(), ObserveError> {
        let i = self.index(metric)?;
        match &mut self.states[i].acc {
            Acc::Continuous { b, c, d } => {
                if baseline.is_finite() && candidate.is_finite() {
                    let (lb, lc) = (baseline.max(1e-12).ln(), candidate.max(1e-12).ln());
                    b.push(lb);
                    c.push(lc);
                    d.push(lc - lb);
                }
                Ok(())
            }
            Acc::Counts { .. } => Err(ObserveError(format!(
                "{metric:?} is a proportion metric; use observe_counts"
            ))),
        }
    }

    /// Add `events` out of `total` observations of a proportion metric.
    pub fn observe_counts(
        &mut self,
        arm: Arm,
        metric: &str,
        events: u64,
        total: u64,
    ) -> Result<(), ObserveError> {
        let i = self.index(metric)?;
        if events > total {
            return Err(ObserveError(format!(
                "{events} events out of {total} for {metric:?}"
            )));
        }
        match &mut self.states[i].acc {
            Acc::Counts { b, c } => {
                let k = if arm == Arm::Baseline { b } else { c };
                k.events += events;
                k.total += total;
                Ok(())
            }
            Acc::Continuous { .. } => Err(ObserveError(format!(
                "{metric:?} is a continuous metric; use observe"
            ))),
        }
    }

    /// Evidence at this look, without recording it as a look.
    pub fn evidence(&self) -> Vec<MetricEvidence> {
        self.config
            .metrics
            .iter()
            .zip(&self.states)
            .map(|(m, s)| self.assess(m, s).0)
            .collect()
    }

    /// Take a look: update every metric's evidence and decide. `Fail` and `Pass` are final.
    pub fn decision(&mut self) -> Decision {
        if let Some(d) = &self.decided {
            return d.clone();
        }
        self.looks += 1;
        let mut evidence = Vec::with_capacity(self.states.len());
        for i in 0..self.states.len() {
            let m = &self.config.metrics[i];
            let (mut e, fail, pass, p) = self.assess(m, &self.states[i]);
            let s = &mut self.states[i];
            s.min_p = s.min_p.min(p);
            s.failed |= fail;
            s.passed |= pass && !s.failed;
            e.p_value = s.min_p;
            if s.failed {
                e.status = SeqStatus::Failed;
            } else if s.passed {
                e.status = SeqStatus::Passed;
            }
            evidence.push(e);
        }
        let metrics = &self.config.metrics;
        let total: f64 = metrics.iter().map(|m| m.weight).sum();
        let pct = |w: f64| if total > 0.0 { 100.0 * w / total } else { 0.0 };
        let failed_weight: f64 = metrics
            .iter()
            .zip(&self.states)
            .filter(|(_, s)| s.failed)
            .map(|(m, _)| m.weight)
            .sum();
        let passed_weight: f64 = metrics
            .iter()
            .zip(&self.states)
            .filter(|(_, s)| s.passed)
            .map(|(m, _)| m.weight)
            .sum();
        let critical = metrics
            .iter()
            .zip(&self.states)
            .find(|(m, s)| m.critical && s.failed);
        let heaviest_failed = metrics
            .iter()
            .zip(&self.states)
            .filter(|(_, s)| s.failed)
            .max_by(|a, b| a.0.weight.total_cmp(&b.0.weight));
        let all_decided = self.states.iter().all(|s| s.failed || s.passed);
        let d = if let Some((m, _)) = critical {
            Decision::Fail(m.name.clone(), evidence)
        } else if let (Some((m, _)), true) = (
            heaviest_failed,
            pct(total - failed_weight) < self.config.pass_threshold,
        ) {
            Decision::Fail(m.name.clone(), evidence)
        } else if !metrics.is_empty()
            && all_decided
            && pct(passed_weight) >= self.config.pass_threshold
        {
            Decision::Pass(evidence)
        } else {
            Decision::Continue
        };
        if d != Decision::Continue {
            self.decided = Some(d.clone());
        }
        d
    }

    /// (evidence, fail now, pass now, one-look p-value)
    fn assess(&self, m: &Metric, s: &State) -> (MetricEvidence, bool, bool, f64) {
        let alpha = self.alpha_each;
        let min = m.min_samples.max(2);
        let up = matches!(m.direction, Direction::Increase | Direction::Either);
        let down = matches!(m.direction, Direction::Decrease | Direction::Either);
        let tol = m.tolerance;
        let mut e = MetricEvidence {
            name: m.name.clone(),
            n_baseline: 0,
            n_candidate: 0,
            estimate: f64::NAN,
            lower: f64::NAN,
            upper: f64::NAN,
            p_value: s.min_p,
            status: SeqStatus::Collecting,
            reason: String::new(),
        };
        let (fail, pass, p) = match &s.acc {
            Acc::Continuous { b, c, d } => {
                e.n_baseline = b.n;
                e.n_candidate = c.n;
                if b.n < min || c.n < min {
                    e.reason = format!(
                        "collecting: {} baseline, {} candidate samples of {min}",
                        b.n, c.n
                    );
                    return (e, false, false, 1.0);
                }
                let paired = d.n == b.n && d.n == c.n;
                let (est, v) = if paired {
                    (d.mean, d.var() / d.n as f64)
                } else {
                    (c.mean - b.mean, c.var() / c.n as f64 + b.var() / b.n as f64)
                };
                let v = v.max(1e-12);
                let tau = m.mixture_scale.unwrap_or((1.0 + tol).ln().max(0.05));
                let r = mixture_radius(v, tau * tau, alpha);
                let (lo, hi) = (est - r, est + r);
                e.estimate = est.exp() - 1.0;
                e.lower = lo.exp() - 1.0;
                e.upper = hi.exp() - 1.0;
                // The shift in the metric's own unit at the baseline's geometric mean: an effect
                // within `abs_tolerance` (a measurement's resolution, say) is no regression.
                let base = b.mean.exp();
                let abs_shift = |log_ratio: f64| base * (log_ratio.exp() - 1.0);
                let beyond_abs = |log_ratio: f64| abs_shift(log_ratio).abs() > m.abs_tolerance;
                let fail = (up && lo > 0.0 && e.estimate > tol && beyond_abs(est))
                    || (down && hi < 0.0 && e.estimate < -tol && beyond_abs(est));
                let up_ok = !up || hi < (1.0 + tol).ln() || abs_shift(hi) < m.abs_tolerance;
                let down_ok = !down
                    || tol >= 1.0
                    || lo > (1.0 - tol).ln()
                    || -abs_shift(lo) < m.abs_tolerance;
                (fail, up_ok && down_ok, mixture_p_value(est, v, tau * tau))
            }
            Acc::Counts { b, c } => {
                e.n_baseline = b.total;
                e.n_candidate = c.total;
                if b.total < min || c.total < min {
                    e.reason = format!(
                        "collecting: {} baseline, {} candidate observations of {min}",
                        b.total, c.total
                    );
                    return (e, false, false, 1.0);
                }
                let var = |k: &Counts| {
                    let p = (k.events as f64 + 1.0) / (k.total as f64 + 2.0);
                    p * (1.0 - p) / k.total as f64
                };
                let (pb, pc) = (b.rate(), c.rate());
                let (vb, vc) = (var(b), var(c));
                let tau = m.mixture_scale.unwrap_or(m.abs_tolerance.max(0.02));
                let tau2 = tau * tau;
                let est = pc - pb;
                let v = vb + vc;
                let r = mixture_radius(v, tau2, alpha);
                e.estimate = est;
                e.lower = est - r;
                e.upper = est + r;
                let margin = (tol * pb).max(m.abs_tolerance);
                let fail = (up && e.lower > 0.0 && est > margin)
                    || (down && e.upper < 0.0 && -est > margin);
                // contrasts p_c − (1+tol) p_b  and  (1−tol) p_b − p_c  must be below abs_tolerance
                let contrast_ok = |k: f64, sign: f64| {
                    let kest = sign * (pc - k * pb);
                    let kv = vc + k * k * vb;
                    kest + mixture_radius(kv, tau2, alpha) < m.abs_tolerance
                };
                let up_ok = !up || contrast_ok(1.0 + tol, 1.0);
                let down_ok = !down || tol >= 1.0 || contrast_ok(1.0 - tol, -1.0);
                (fail, up_ok && down_ok, mixture_p_value(est, v, tau2))
            }
        };
        e.status = if fail {
            SeqStatus::Failed
        } else if pass {
            SeqStatus::Passed
        } else {
            SeqStatus::Undecided
        };
        e.reason = match e.status {
            SeqStatus::Failed => format!(
                "regression: bounds [{:+.4}, {:+.4}] exclude 0, estimate {:+.4} beyond tolerance",
                e.lower, e.upper, e.estimate
            ),
            SeqStatus::Passed => format!(
                "within tolerance: bounds [{:+.4}, {:+.4}]",
                e.lower, e.upper
            ),
            _ => format!(
                "undecided: estimate {:+.4}, bounds [{:+.4}, {:+.4}]",
                e.estimate, e.lower, e.upper
            ),
        };
        (e, fail, pass, p)
    }
}

/// The z-value a fixed-horizon two-sided test would use at the same per-metric level, for
/// comparison with the sequential bounds' width.
pub fn fixed_horizon_z(alpha: f64) -> f64 {
    norm_ppf(1.0 - alpha / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn config() -> JudgeConfig {
        JudgeConfig::with_metrics(vec![
            Metric::continuous("latency").tolerance(0.10),
            Metric::proportion("errors")
                .critical(true)
                .abs_tolerance(0.005),
        ])
    }

    fn feed(j: &mut SequentialJudge, r: &mut Rng, n: usize, factor: f64, pb: f64, pc: f64) {
        for _ in 0..n {
            j.observe(Arm::Baseline, "latency", r.lognormal(100.0, 0.5))
                .unwrap();
            j.observe(Arm::Candidate, "latency", r.lognormal(100.0 * factor, 0.5))
                .unwrap();
        }
        j.observe_counts(Arm::Baseline, "errors", r.binomial(n as u64, pb), n as u64)
            .unwrap();
        j.observe_counts(Arm::Candidate, "errors", r.binomial(n as u64, pc), n as u64)
            .unwrap();
    }

    /// Batch medians of one time window share its noise (a loaded machine slows both arms):
    /// observed in pairs, that noise cancels, and an A/A run passes and a 25 % regression fails
    /// where the unpaired test is still undecided on the same data.
    #[test]
    fn pairs_cancel_noise_both_arms_share() {
        let cfg = || JudgeConfig::with_metrics(vec![Metric::continuous("latency").tolerance(0.10)]);
        for (factor, want_fail) in [(1.0, false), (1.25, true)] {
            let (mut paired, mut unpaired) =
                (SequentialJudge::new(cfg()), SequentialJudge::new(cfg()));
            let mut r = Rng::new(7);
            let mut decided_at = None;
            for look in 1..=200 {
                // the machine's load this window: a factor of 0.5 to 4 on both arms
                let load = r.lognormal(1.0, 0.7);
                let b = r.lognormal(10.0, 0.05) * load;
                let c = r.lognormal(10.0 * factor, 0.05) * load;
                paired.observe_pair("latency", b, c).unwrap();
                unpaired.observe(Arm::Baseline, "latency", b).unwrap();
                unpaired.observe(Arm::Candidate, "latency", c).unwrap();
                if decided_at.is_none() && paired.decision() != Decision::Continue {
                    decided_at = Some(look);
                    assert_eq!(
                        unpaired.decision(),
                        Decision::Continue,
                        "unpaired decided as early, factor {factor}"
                    );
                }
            }
            let d = paired.decision();
            assert_eq!(matches!(d, Decision::Fail(..)), want_fail, "{d:?}");
            assert_eq!(matches!(d, Decision::Pass(..)), !want_fail, "{d:?}");
            let at = decided_at.unwrap();
            assert!(at <= 60, "factor {factor}: decided after {at} pairs");
        }
    }

    /// A shift within the metric's absolute tolerance is no regression, however steady: medians
    /// of 1 ms against 2 ms (one step of nginx's resolution) pass with a 2 ms tolerance and fail
    /// without one.
    #[test]
    fn a_steady_shift_within_the_absolute_tolerance_is_no_regression() {
        for (abs, want_fail) in [(2.0, false), (0.0, true)] {
            let mut j = SequentialJudge::new(JudgeConfig::with_metrics(vec![Metric::continuous(
                "latency",
            )
            .tolerance(0.25)
            .abs_tolerance(abs)
            .min_samples(10)]));
            let mut d = Decision::Continue;
            for _ in 0..40 {
                j.observe_pair("latency", 1.5, 2.5).unwrap();
                d = j.decision();
                if d != Decision::Continue {
                    break;
                }
            }
            assert_eq!(
                matches!(d, Decision::Fail(..)),
                want_fail,
                "abs {abs}: {d:?}"
            );
            assert_eq!(
                matches!(d, Decision::Pass(..)),
                !want_fail,
                "abs {abs}: {d:?}"
            );
        }
    }

    #[test]
    fn a_pair_of_non_finite_values_is_ignored_and_proportions_refuse_pairs() {
        let mut j = SequentialJudge::new(config());
        j.observe_pair("latency", f64::NAN, 1.0).unwrap();
        assert_eq!(j.evidence()[0].n_baseline, 0);
        assert!(j.observe_pair("errors", 1.0, 1.0).is_err());
    }

    #[test]
    fn too_little_data_continues() {
        let mut j = SequentialJudge::new(config());
        let mut r = Rng::new(1);
        feed(&mut j, &mut r, 10, 1.0, 0.0, 0.0);
        assert_eq!(j.decision(), Decision::Continue);
        assert!(j
            .evidence()
            .iter()
            .all(|e| e.status == SeqStatus::Collecting));
    }

    #[test]
    fn identical_arms_eventually_pass() {
        let mut j = SequentialJudge::new(config());
        let mut r = Rng::new(2);
        let mut looks = 0;
        let d = loop {
            feed(&mut j, &mut r, 100, 1.0, 0.005, 0.005);
            looks += 1;
            let d = j.decision();
            if d != Decision::Continue || looks > 600 {
                break d;
            }
        };
        assert!(matches!(d, Decision::Pass(_)), "{d:?}");
        // final: further data does not change it
        feed(&mut j, &mut r, 100, 3.0, 0.005, 0.5);
        assert_eq!(j.decision(), d);
    }

    #[test]
    fn error_regression_fails_fast_on_the_critical_metric() {
        let mut j = SequentialJudge::new(config());
        let mut r = Rng::new(3);
        let mut secs = 0;
        let d = loop {
            feed(&mut j, &mut r, 100, 1.0, 0.005, 0.05);
            secs += 1;
            let d = j.decision();
            if d != Decision::Continue {
                break d;
            }
        };
        match d {
            Decision::Fail(name, ev) => {
                assert_eq!(name, "errors");
                assert!(ev[1].lower > 0.0 && ev[1].p_value < j.alpha_per_metric());
            }
            d => panic!("{d:?}"),
        }
        assert!(secs <= 10, "{secs}");
    }

    #[test]
    fn latency_regression_fails() {
        let mut j = SequentialJudge::new(config());
        let mut r = Rng::new(4);
        let d = loop {
            feed(&mut j, &mut r, 100, 1.25, 0.005, 0.005);
            let d = j.decision();
            if d != Decision::Continue {
                break d;
            }
        };
        assert!(
            matches!(&d, Decision::Fail(name, _) if name == "latency"),
            "{d:?}"
        );
    }

    #[test]
    fn wrong_kind_and_unknown_metric_are_errors() {
        let mut j = SequentialJudge::new(config());
        assert!(j.observe(Arm::Baseline, "errors", 1.0).is_err());
        assert!(j.observe_counts(Arm::Baseline, "latency", 1, 2).is_err());
        assert!(j.observe(Arm::Baseline, "nope", 1.0).is_err());
        assert!(j.observe_counts(Arm::Baseline, "errors", 3, 2).is_err());
    }

    #[test]
    fn mixture_bounds_are_wider_than_fixed_horizon() {
        let v = 1e-3;
        let r = mixture_radius(v, 0.01, 0.01);
        assert!(r > fixed_horizon_z(0.01) * v.sqrt());
        // p-value crosses alpha exactly where the bound crosses zero
        let p = mixture_p_value(r, v, 0.01);
        assert!((p - 0.01).abs() < 1e-9, "{p}");
    }
}
