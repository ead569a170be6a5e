//! Prints the sequential judge's operating characteristics (no timing): run with
//! `cargo bench -p pipeline-analysis`. RUNS (env) sets the number of runs per scenario.

use pipeline_analysis::{simulate, Scenario};

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    for scenario in [
        Scenario::aa(),
        Scenario::error_regression(0.005, 0.05),
        Scenario::latency_regression(1.25),
    ] {
        println!("{}", simulate(&scenario, runs, 0x5eed).summary());
    }
}
