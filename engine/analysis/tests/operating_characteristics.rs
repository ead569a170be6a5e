//! Operating characteristics of the sequential judge on simulated traffic (deterministic seeds;
//! no wall-clock assertions). Run with `--nocapture` to see the figures.

use pipeline_analysis::{simulate, Scenario};

#[test]
fn aa_false_failure_rate_is_at_most_one_percent() {
    let oc = simulate(&Scenario::aa(), 400, 0xA11CE);
    println!("{}", oc.summary());
    assert!(oc.runs >= 200);
    assert!(oc.false_failure_rate() <= 0.01, "{}", oc.summary());
    // identical candidates are passed, not left hanging
    assert!(oc.pass_rate() >= 0.95, "{}", oc.summary());
}

#[test]
fn five_percent_errors_fail_within_ten_seconds() {
    let oc = simulate(&Scenario::error_regression(0.005, 0.05), 200, 0xE770);
    println!("{}", oc.summary());
    assert_eq!(oc.failures, oc.runs, "{}", oc.summary());
    let within = oc.detection_secs.iter().filter(|&&s| s <= 10).count();
    assert!(
        within as f64 >= 0.99 * oc.runs as f64,
        "{within} within 10 s: {}",
        oc.summary()
    );
}

#[test]
fn plus_25_percent_latency_fails_within_sixty_seconds() {
    let oc = simulate(&Scenario::latency_regression(1.25), 200, 0x1A7E);
    println!("{}", oc.summary());
    assert_eq!(oc.failures, oc.runs, "{}", oc.summary());
    assert!(
        oc.detection_quantile(1.0).unwrap() <= 60,
        "{}",
        oc.summary()
    );
}

/// With zero tolerance a failure needs only always-valid significance, so this checks the
/// confidence sequences themselves: the A/A failure rate over all looks stays below α = 2 %.
#[test]
fn aa_with_zero_tolerance_stays_below_alpha() {
    let mut scenario = Scenario::aa();
    scenario.name = "A/A, zero tolerance".into();
    scenario.max_secs = 120;
    for m in &mut scenario.config.metrics {
        m.tolerance = 0.0;
        m.abs_tolerance = 0.0;
    }
    let oc = simulate(&scenario, 300, 0x0A0A);
    println!("{}", oc.summary());
    assert!(
        oc.false_failure_rate() <= scenario.config.alpha(),
        "{}",
        oc.summary()
    );
}
