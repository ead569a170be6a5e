//! The canary judge: pure computation over metric samples, no I/O.
//!
//! - [`stats`]: Mann-Whitney U (scipy-identical asymptotic and exact p-values), Hodges–Lehmann,
//!   Fisher's exact and two-proportion tests, the normal distribution.
//! - [`judge`](mod@judge): the fixed-horizon judge with Kayenta `NetflixACAJudge` semantics (confidence
//!   0.98, tolerance 0.25, pass 95, marginal 75): per-metric verdicts, weights, critical metrics,
//!   score and outcome.
//! - [`interval`]: the effects' confidence intervals: Hodges–Lehmann shift (Moses) and rate
//!   difference (Newcombe's hybrid score).
//! - [`sequential`]: an always-valid sequential judge (mixture SPRT / normal-mixture confidence
//!   sequences) that stops early both ways with the false-failure rate bounded over all looks
//!   and metrics.
//! - [`simulate`](mod@simulate): operating characteristics of the sequential judge on
//!   simulated traffic, with the deterministic PRNG in [`rng`].

pub mod interval;
pub mod judge;
pub mod rng;
pub mod sequential;
pub mod simulate;
pub mod stats;

pub use interval::{hodges_lehmann_interval, newcombe_interval};
pub use judge::{
    judge, Counts, Direction, Effect, JudgeConfig, Metric, MetricData, MetricKind, MetricStatus,
    MetricVerdict, Outcome, Summary, TestUsed, Verdict,
};
pub use sequential::{Arm, Decision, MetricEvidence, SeqStatus, SequentialJudge};
pub use simulate::{simulate, OperatingCharacteristics, Scenario};
pub use stats::{
    hodges_lehmann, hodges_lehmann_paired, mann_whitney, mann_whitney_with, wilcoxon_signed_rank,
    Alternative, MwMethod, MwResult, SrResult,
};

/// JSON has no NaN: serde_json writes it as `null`. Fields that can be NaN (a summary of no
/// samples, an effect not estimated) read `null` back as NaN, so a serialised verdict or
/// evidence reads back.
pub fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    use serde::Deserialize;
    Option::<f64>::deserialize(d).map(|v| v.unwrap_or(f64::NAN))
}
