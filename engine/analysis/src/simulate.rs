//! Operating characteristics of the sequential judge on simulated traffic: how often it fails a
//! candidate identical to the baseline (A/A), and how fast it catches real regressions (A/B).
//!
//! Each simulated second, each arm serves `rate_per_sec` requests with lognormal latencies and
//! Bernoulli errors; the judge takes one look per second. Everything is driven by the
//! deterministic [`Rng`], so a (scenario, runs, seed) triple always gives the
//! same figures.

use crate::judge::{JudgeConfig, Metric};
use crate::rng::{splitmix64, Rng};
use crate::sequential::{Arm, Decision, SequentialJudge};
use serde::{Deserialize, Serialize};

/// Simulated traffic. The judge config must have a continuous metric named `latency` and a
/// proportion metric named `errors`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub config: JudgeConfig,
    /// Requests per second served by *each* arm.
    pub rate_per_sec: u64,
    /// Stop a run undecided after this many seconds.
    pub max_secs: u64,
    pub latency_median_ms: f64,
    /// Log-scale standard deviation of latencies.
    pub latency_sigma: f64,
    /// Candidate latencies are baseline latencies × this factor (1.25 = +25 %).
    pub latency_factor: f64,
    pub baseline_error_rate: f64,
    pub candidate_error_rate: f64,
}

impl Scenario {
    /// The judge used by the standard scenarios: Kayenta's confidence (0.98) and thresholds;
    /// latency (p-values on log latency) with a 10 % tolerance; errors critical, with a 25 %
    /// relative and 0.5-percentage-point absolute tolerance.
    pub fn standard_config() -> JudgeConfig {
        JudgeConfig::with_metrics(vec![
            Metric::continuous("latency").tolerance(0.10),
            Metric::proportion("errors")
                .critical(true)
                .tolerance(0.25)
                .abs_tolerance(0.005),
        ])
    }

    fn base(name: &str) -> Self {
        Scenario {
            name: name.to_string(),
            config: Self::standard_config(),
            rate_per_sec: 100,
            max_secs: 600,
            latency_median_ms: 100.0,
            latency_sigma: 1.0,
            latency_factor: 1.0,
            baseline_error_rate: 0.005,
            candidate_error_rate: 0.005,
        }
    }

    /// A/A: candidate identical to baseline (0.5 % errors, lognormal latency σ = 1).
    pub fn aa() -> Self {
        Self::base("A/A")
    }

    /// Candidate latencies × `factor`.
    pub fn latency_regression(factor: f64) -> Self {
        Scenario {
            latency_factor: factor,
            ..Self::base(&format!("latency x{factor}"))
        }
    }

    /// Error rate `baseline` → `candidate`.
    pub fn error_regression(baseline: f64, candidate: f64) -> Self {
        Scenario {
            baseline_error_rate: baseline,
            candidate_error_rate: candidate,
            ..Self::base(&format!(
                "errors {:.1}% -> {:.1}%",
                100.0 * baseline,
                100.0 * candidate
            ))
        }
    }
}

/// Outcome counts and stopping times over the simulated runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperatingCharacteristics {
    pub scenario: String,
    pub runs: usize,
    pub failures: usize,
    pub passes: usize,
    pub undecided: usize,
    /// Seconds of traffic until `Fail`, one entry per failing run.
    pub detection_secs: Vec<u64>,
    /// Seconds of traffic until `Pass`, one entry per passing run.
    pub pass_secs: Vec<u64>,
}

fn quantile(v: &[u64], q: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let i = ((s.len() - 1) as f64 * q).round() as usize;
    Some(s[i])
}

impl OperatingCharacteristics {
    pub fn fail_rate(&self) -> f64 {
        self.failures as f64 / self.runs.max(1) as f64
    }
    /// The failure rate — a *false* failure rate when the scenario is A/A.
    pub fn false_failure_rate(&self) -> f64 {
        self.fail_rate()
    }
    pub fn pass_rate(&self) -> f64 {
        self.passes as f64 / self.runs.max(1) as f64
    }
    /// Quantile (0..=1) of the detection times, None if nothing was detected.
    pub fn detection_quantile(&self, q: f64) -> Option<u64> {
        quantile(&self.detection_secs, q)
    }
    pub fn pass_quantile(&self, q: f64) -> Option<u64> {
        quantile(&self.pass_secs, q)
    }
    /// One-line summary for test and benchmark output.
    pub fn summary(&self) -> String {
        let q = |v: Option<u64>| v.map_or("-".to_string(), |s| format!("{s}s"));
        format!(
            "{}: {} runs, fail {:.2}% ({}), pass {:.2}%, undecided {}; time to fail median {} p95 {} max {}; time to pass median {} p95 {} max {}",
            self.scenario,
            self.runs,
            100.0 * self.fail_rate(),
            self.failures,
            100.0 * self.pass_rate(),
            self.undecided,
            q(self.detection_quantile(0.5)),
            q(self.detection_quantile(0.95)),
            q(self.detection_quantile(1.0)),
            q(self.pass_quantile(0.5)),
            q(self.pass_quantile(0.95)),
            q(self.pass_quantile(1.0)),
        )
    }
}

/// Run `runs` independent simulations of `scenario` with the sequential judge.
pub fn simulate(scenario: &Scenario, runs: usize, seed: u64) -> OperatingCharacteristics {
    let mut oc = OperatingCharacteristics {
        scenario: scenario.name.clone(),
        runs,
        failures: 0,
        passes: 0,
        undecided: 0,
        detection_secs: Vec::new(),
        pass_secs: Vec::new(),
    };
    let mut seeds = seed;
    for _ in 0..runs {
        let mut rng = Rng::new(splitmix64(&mut seeds));
        let mut judge = SequentialJudge::new(scenario.config.clone());
        let mut outcome = Decision::Continue;
        let mut sec = 0;
        while sec < scenario.max_secs && outcome == Decision::Continue {
            sec += 1;
            for (arm, factor, err) in [
                (Arm::Baseline, 1.0, scenario.baseline_error_rate),
                (
                    Arm::Candidate,
                    scenario.latency_factor,
                    scenario.candidate_error_rate,
                ),
            ] {
                let median = scenario.latency_median_ms * factor;
                for _ in 0..scenario.rate_per_sec {
                    let l = rng.lognormal(median, scenario.latency_sigma);
                    judge
                        .observe(arm, "latency", l)
                        .expect("scenario config needs a continuous `latency` metric");
                }
                let errors = rng.binomial(scenario.rate_per_sec, err);
                judge
                    .observe_counts(arm, "errors", errors, scenario.rate_per_sec)
                    .expect("scenario config needs a proportion `errors` metric");
            }
            outcome = judge.decision();
        }
        match outcome {
            Decision::Fail(..) => {
                oc.failures += 1;
                oc.detection_secs.push(sec);
            }
            Decision::Pass(_) => {
                oc.passes += 1;
                oc.pass_secs.push(sec);
            }
            Decision::Continue => oc.undecided += 1,
        }
    }
    oc
}
