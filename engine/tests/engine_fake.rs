//! Engine behaviour over an in-memory provider: plans, applies, failures, retries, cancel,
//! rollouts and crashes, without starting a single process.

mod fake;

use fake::{action, retries, Env};
use pipeline_engine::apply::{Event, RetryPolicy};
use pipeline_engine::plan::{self, Action, Plan};
use pipeline_engine::provider::{ErrorKind, Rollout, Timeouts};
use pipeline_engine::state::Status;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

const ONE: &str = r#"thing "a" { value = "1" }"#;

const THREE: &str = r#"
thing "a" { value = "1" }
thing "b" { input = thing.a.id }
thing "c" { value = "c" }
"#;

fn counted(value: &str) -> String {
    format!("thing \"s\" {{\n  count = 3\n  value = \"{value}\"\n}}\n")
}

#[tokio::test]
async fn a_new_block_is_created_and_recorded_ready() {
    let env = Env::new();
    let (p, report, _) = env.apply(ONE).await;
    assert_eq!(action(&p, "thing.a").0, Action::Create);
    assert!(report.ok(), "{report:?}");
    assert_eq!(env.status("thing.a"), Some(Status::Ready));
    assert_eq!(env.attr("thing.a", "value"), Some(json!("1")));
    assert_eq!(env.fake.ops("apply"), vec!["thing.a"]);
}

#[tokio::test]
async fn an_unchanged_stack_plans_no_op_and_calls_nothing() {
    let env = Env::new();
    env.apply(ONE).await;
    let before = env.fake.ops("*").len();
    let (p, report, _) = env.apply(ONE).await;
    assert_eq!(action(&p, "thing.a").0, Action::NoOp);
    assert!(!p.has_changes());
    assert!(report.ok());
    assert_eq!(env.fake.ops("*").len(), before, "no world-changing call");
}

#[tokio::test]
async fn a_changed_attribute_updates_in_place_keeping_the_id() {
    let env = Env::new();
    env.apply(ONE).await;
    let id = env.attr("thing.a", "id");
    let (p, report, _) = env.apply(r#"thing "a" { value = "2" }"#).await;
    assert_eq!(action(&p, "thing.a").0, Action::Update);
    assert!(report.ok());
    assert_eq!(env.attr("thing.a", "value"), Some(json!("2")));
    assert_eq!(env.attr("thing.a", "id"), id);
    assert_eq!(env.fake.count("delete", "thing.a"), 0);
}

#[tokio::test]
async fn a_force_new_attribute_replaces_and_says_which() {
    let env = Env::new();
    env.apply(r#"thing "a" { size = "s" }"#).await;
    let (p, report, _) = env.apply(r#"thing "a" { size = "m" }"#).await;
    let (a, reason) = action(&p, "thing.a");
    assert_eq!(a, Action::Replace);
    assert!(reason
        .unwrap_or_default()
        .contains("`size` forces replacement"));
    assert!(report.ok());
    assert_eq!(env.fake.ops("*"), vec!["thing.a", "thing.a", "thing.a"]);
    let ops: Vec<_> = env
        .fake
        .calls()
        .iter()
        .map(|c| c.op)
        .filter(|o| *o != "read")
        .collect();
    assert_eq!(
        ops,
        vec!["apply", "delete", "apply"],
        "delete before the new one"
    );
}

#[tokio::test]
async fn a_removed_block_is_deleted_and_forgotten() {
    let env = Env::new();
    env.apply(THREE).await;
    let (p, report, _) = env
        .apply(
            r#"thing "a" { value = "1" }
thing "b" { input = thing.a.id }"#,
        )
        .await;
    let (a, reason) = action(&p, "thing.c");
    assert_eq!(a, Action::Delete);
    assert_eq!(reason.as_deref(), Some("no longer in the stack"));
    assert!(report.ok());
    assert_eq!(env.fake.ops("delete"), vec!["thing.c"]);
    assert!(!env.state().resources.contains_key("thing.c"));
}

#[tokio::test]
async fn a_dependent_is_created_after_what_it_reads_and_sees_its_id() {
    let env = Env::new();
    let (_, report, _) = env.apply(THREE).await;
    assert!(report.ok());
    let applied = env.fake.ops("apply");
    let pos = |a: &str| applied.iter().position(|x| x == a).unwrap();
    assert!(pos("thing.a") < pos("thing.b"));
    assert_eq!(env.attr("thing.b", "input"), env.attr("thing.a", "id"));
}

#[tokio::test]
async fn drift_of_an_attribute_is_reported_and_planned_back() {
    let env = Env::new();
    env.apply(ONE).await;
    let mut now = env.state().resources["thing.a"].attrs.clone();
    now.insert("value".into(), json!("changed outside"));
    env.fake.drift("thing.a", Some(now));
    let (p, _) = env.plan(ONE).await;
    let d = p
        .drift
        .iter()
        .find(|d| d.addr == "thing.a")
        .expect("drift found");
    assert!(!d.gone);
    assert_eq!(d.changes.len(), 1);
    assert_eq!(d.changes[0].name, "value");
    assert_eq!(action(&p, "thing.a").0, Action::Update);
}

#[tokio::test]
async fn an_instance_gone_outside_is_reported_and_created_again() {
    let env = Env::new();
    env.apply(ONE).await;
    env.fake.drift("thing.a", None);
    let (p, _) = env.plan(ONE).await;
    assert!(p.drift.iter().any(|d| d.addr == "thing.a" && d.gone));
    assert_eq!(action(&p, "thing.a").0, Action::Create);
}

#[tokio::test]
async fn a_failure_skips_its_dependents_and_siblings_still_apply() {
    let env = Env::new();
    env.fake.fail("thing.a", ErrorKind::Fatal, 1);
    let (_, report, _) = env.apply(THREE).await;
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].addr, "thing.a");
    assert!(report
        .skipped
        .iter()
        .any(|(a, r)| a == "thing.b" && r.contains("thing.a")));
    assert!(report.succeeded.iter().any(|(a, _)| a == "thing.c"));
    assert_eq!(env.fake.count("apply", "thing.b"), 0);
    assert_eq!(env.status("thing.a"), Some(Status::Tainted));
    assert_eq!(env.status("thing.c"), Some(Status::Ready));
}

#[tokio::test]
async fn a_tainted_instance_is_replaced_by_the_next_plan() {
    let env = Env::new();
    env.fake.fail("thing.a", ErrorKind::Fatal, 1);
    env.apply(ONE).await;
    let (p, report, _) = env.apply(ONE).await;
    let (a, reason) = action(&p, "thing.a");
    assert_eq!(a, Action::Replace);
    assert!(reason.unwrap_or_default().contains("tainted"));
    assert!(report.ok());
    assert_eq!(env.status("thing.a"), Some(Status::Ready));
}

#[tokio::test]
async fn transient_twice_then_success_is_applied_after_three_attempts() {
    let env = Env::new();
    env.fake.fail("thing.a", ErrorKind::Transient, 2);
    let (_, report, events) = env.apply(ONE).await;
    assert!(report.ok(), "{report:?}");
    assert_eq!(env.fake.count("apply", "thing.a"), 3);
    let r = retries(&events, "thing.a");
    assert_eq!(
        r.iter()
            .map(|(a, of, k, _)| (*a, *of, *k))
            .collect::<Vec<_>>(),
        vec![(2, 4, ErrorKind::Transient), (3, 4, ErrorKind::Transient)]
    );
    assert_eq!(env.status("thing.a"), Some(Status::Ready));
}

#[tokio::test]
async fn fatal_is_not_retried() {
    let env = Env::new();
    env.fake.fail("thing.a", ErrorKind::Fatal, 1);
    let (_, report, events) = env.apply(ONE).await;
    assert_eq!(env.fake.count("apply", "thing.a"), 1);
    assert!(retries(&events, "thing.a").is_empty());
    assert_eq!(report.failed.len(), 1);
}

#[tokio::test]
async fn only_throttled_and_transient_are_retried() {
    for kind in [
        ErrorKind::InvalidConfig,
        ErrorKind::NotFound,
        ErrorKind::Unreachable,
        ErrorKind::Authentication,
    ] {
        let env = Env::new();
        env.fake.fail("thing.a", kind, 1);
        let (_, report, _) = env.apply(ONE).await;
        assert_eq!(env.fake.count("apply", "thing.a"), 1, "{kind:?}");
        assert_eq!(report.failed.len(), 1, "{kind:?}");
    }
}

#[tokio::test]
async fn transient_every_time_gives_up_after_the_bound_and_says_so() {
    let env = Env::new();
    env.fake.fail("thing.a", ErrorKind::Transient, 10);
    let (_, report, events) = env.apply(ONE).await;
    assert_eq!(env.fake.count("apply", "thing.a"), 4);
    assert_eq!(retries(&events, "thing.a").len(), 3);
    let error = report.failed[0].error.to_string();
    assert!(error.contains("4 attempts"), "{error}");
    assert_eq!(env.status("thing.a"), Some(Status::Tainted));
}

#[tokio::test]
async fn throttled_backs_off_longer_than_transient() {
    let env = Env::new();
    env.fake.fail("thing.a", ErrorKind::Throttled, 2);
    env.fake.fail("thing.c", ErrorKind::Transient, 2);
    let (_, report, events) = env
        .apply(
            r#"thing "a" { value = "1" }
thing "c" { value = "c" }"#,
        )
        .await;
    assert!(report.ok(), "{report:?}");
    let t = retries(&events, "thing.a");
    let n = retries(&events, "thing.c");
    assert_eq!((t.len(), n.len()), (2, 2));
    for k in 0..2 {
        assert!(
            t[k].3 > n[k].3,
            "attempt {}: {:?} vs {:?}",
            k + 2,
            t[k].3,
            n[k].3
        );
    }
    // Each wait is longer than the one before.
    assert!(n[1].3 > n[0].3 && t[1].3 > t[0].3);
}

#[test]
fn backoff_is_exponential_capped_and_jittered_within_bounds() {
    let p = RetryPolicy::default();
    let t = ErrorKind::Transient;
    assert_eq!(p.delay(t, 1, 0.0), Duration::from_millis(100));
    assert_eq!(p.delay(t, 2, 0.0), Duration::from_millis(200));
    assert!(p.delay(t, 1, 0.999) < Duration::from_millis(200));
    assert_eq!(p.delay(t, 20, 0.0), p.cap / 2);
    assert!(p.delay(ErrorKind::Throttled, 20, 0.999) <= p.cap);
    assert!(p.delay(ErrorKind::Throttled, 1, 0.0) > p.delay(t, 1, 0.999));
}

#[tokio::test]
async fn a_transient_delete_is_retried() {
    let env = Env::new();
    env.apply(THREE).await;
    env.fake.fail("thing.c", ErrorKind::Transient, 1);
    let (_, report, events) = env
        .apply(
            r#"thing "a" { value = "1" }
thing "b" { input = thing.a.id }"#,
        )
        .await;
    assert!(report.ok(), "{report:?}");
    assert_eq!(env.fake.count("delete", "thing.c"), 2);
    assert_eq!(retries(&events, "thing.c").len(), 1);
}

#[tokio::test]
async fn cancel_before_start_runs_nothing() {
    let env = Env::new();
    env.fake.cancel.store(true, Ordering::SeqCst);
    let (_, report, _) = env.apply(THREE).await;
    assert!(report.interrupted);
    assert!(report.succeeded.is_empty());
    assert_eq!(report.skipped.len(), 3);
    assert!(env.fake.ops("*").is_empty());
}

#[tokio::test]
async fn cancel_during_backoff_stops_retrying() {
    let mut env = Env::new();
    // A wait far longer than the test: only the cancel ends it.
    env.retry = RetryPolicy {
        base: Duration::from_secs(600),
        cap: Duration::from_secs(600),
        ..RetryPolicy::default()
    };
    env.fake.fail("thing.a", ErrorKind::Transient, 3);
    let (p, config) = env.plan(ONE).await;
    let cancel = env.fake.cancel.clone();
    let fake = env.fake.clone();
    let watcher = tokio::spawn(async move {
        // Cancel once the first call has been made: its retry waits ten minutes.
        while fake.count("apply", "thing.a") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cancel.store(true, Ordering::SeqCst);
    });
    let (report, events) = env.apply_plan(&p, &config).await;
    watcher.await.unwrap();
    assert_eq!(env.fake.count("apply", "thing.a"), 1);
    assert_eq!(retries(&events, "thing.a").len(), 1);
    let error = report.failed[0].error.to_string();
    assert!(error.contains("interrupted"), "{error}");
    assert_eq!(env.status("thing.a"), Some(Status::Tainted));
}

#[tokio::test]
async fn a_hanging_create_ends_on_cancel_and_stays_recorded() {
    let mut env = Env::new();
    env.parallelism = 1;
    env.fake.hang("thing.a");
    let (p, config) = env
        .plan(
            r#"thing "a" { value = "1" }
thing "c" { value = "c" }"#,
        )
        .await;
    let cancel = env.fake.cancel.clone();
    let fake = env.fake.clone();
    let watcher = tokio::spawn(async move {
        while fake.count("apply", "thing.a") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cancel.store(true, Ordering::SeqCst);
    });
    let (report, _) = env.apply_plan(&p, &config).await;
    watcher.await.unwrap();
    // Nothing new starts after the cancel: thing.c ran before thing.a or not at all.
    assert_eq!(
        env.fake.ops("*").last().map(String::as_str),
        Some("thing.a")
    );
    if env.fake.count("apply", "thing.c") == 0 {
        assert!(report.interrupted);
        assert!(report
            .skipped
            .iter()
            .any(|(a, r)| a == "thing.c" && r.contains("interrupted")));
    }
    assert!(report.failed.iter().any(|f| f.addr == "thing.a"));
    // Never forgotten: the half-made instance is recorded, and the next plan replaces it.
    assert_ne!(env.status("thing.a"), Some(Status::Ready));
    assert!(env.status("thing.a").is_some());
}

#[tokio::test]
async fn a_pending_record_left_by_a_crash_is_replaced_by_the_next_plan() {
    let env = Env::new();
    env.record(
        "thing.a",
        Status::Pending,
        json!({"value": "1", "id": "half"}),
    );
    let (p, report, _) = env.apply(ONE).await;
    let (a, reason) = action(&p, "thing.a");
    assert_eq!(a, Action::Replace);
    assert!(reason.unwrap_or_default().contains("interrupted"));
    assert!(report.ok());
    let ops: Vec<_> = env
        .fake
        .calls()
        .iter()
        .map(|c| c.op)
        .filter(|o| *o != "read")
        .collect();
    assert_eq!(
        ops,
        vec!["delete", "apply"],
        "cleaned up first, then made again"
    );
    assert_eq!(env.status("thing.a"), Some(Status::Ready));
}

fn rolling(parallel: usize) -> Option<Rollout> {
    Some(Rollout {
        parallel,
        two_phase: false,
        progressive: false,
        describe: None,
    })
}

fn two_phase() -> Option<Rollout> {
    Some(Rollout {
        parallel: 1,
        two_phase: true,
        progressive: false,
        describe: None,
    })
}

#[tokio::test]
async fn a_rolling_update_with_parallel_one_updates_one_instance_at_a_time_in_order() {
    let env = Env::new();
    env.apply(&counted("1")).await;
    env.fake.set_rollout(rolling(1));
    env.fake.max_inflight.store(0, Ordering::SeqCst);
    let before = env.fake.ops("apply").len();
    let (_, report, _) = env.apply(&counted("2")).await;
    assert!(report.ok(), "{report:?}");
    assert_eq!(
        env.fake.ops("apply")[before..],
        ["thing.s[0]", "thing.s[1]", "thing.s[2]"]
    );
    assert_eq!(env.fake.max_inflight.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_rolling_update_that_fails_stops_and_rolls_back_what_it_changed() {
    let env = Env::new();
    env.apply(&counted("1")).await;
    env.fake.set_rollout(rolling(1));
    env.fake.fail("thing.s[1]", ErrorKind::Fatal, 1);
    let (_, report, _) = env.apply(&counted("2")).await;
    assert!(report.failed.iter().any(|f| f.addr == "thing.s[1]"));
    assert_eq!(report.rolled_back, vec!["thing.s[0]".to_string()]);
    assert_eq!(env.fake.count("apply", "thing.s[2]"), 1, "only its create");
    assert_eq!(env.attr("thing.s[0]", "value"), Some(json!("1")));
}

#[tokio::test]
async fn a_two_phase_update_stages_every_instance_before_any_commit() {
    let env = Env::new();
    env.apply(&counted("1")).await;
    env.fake.set_rollout(two_phase());
    let (_, report, _) = env.apply(&counted("2")).await;
    assert!(report.ok(), "{report:?}");
    let ops: Vec<_> = env
        .fake
        .calls()
        .iter()
        .map(|c| c.op)
        .filter(|o| *o == "stage" || *o == "commit")
        .collect();
    assert_eq!(
        ops,
        ["stage", "stage", "stage", "commit", "commit", "commit"]
    );
    for i in 0..3 {
        assert_eq!(
            env.attr(&format!("thing.s[{i}]"), "value"),
            Some(json!("2"))
        );
    }
}

#[tokio::test]
async fn a_two_phase_update_with_one_failed_stage_aborts_them_all() {
    let env = Env::new();
    env.apply(&counted("1")).await;
    env.fake.set_rollout(two_phase());
    env.fake.fail("thing.s[1]", ErrorKind::Fatal, 1);
    let (_, report, _) = env.apply(&counted("2")).await;
    assert!(!report.ok());
    assert!(env.fake.ops("commit").is_empty());
    let mut aborted = env.fake.ops("abort");
    aborted.sort();
    assert_eq!(aborted, ["thing.s[0]", "thing.s[2]"]);
    for i in 0..3 {
        assert_eq!(
            env.attr(&format!("thing.s[{i}]"), "value"),
            Some(json!("1"))
        );
    }
}

#[tokio::test]
async fn a_transient_stage_is_retried_and_the_switch_goes_on() {
    let env = Env::new();
    env.apply(&counted("1")).await;
    env.fake.set_rollout(two_phase());
    env.fake.fail("thing.s[2]", ErrorKind::Transient, 1);
    let (_, report, events) = env.apply(&counted("2")).await;
    assert!(report.ok(), "{report:?}");
    assert_eq!(env.fake.count("stage", "thing.s[2]"), 2);
    assert_eq!(retries(&events, "thing.s[2]").len(), 1);
    assert_eq!(env.fake.ops("commit").len(), 3);
}

#[tokio::test]
async fn events_say_started_and_finished_for_each_change() {
    let env = Env::new();
    let (_, _, events) = env.apply(THREE).await;
    for a in ["thing.a", "thing.b", "thing.c"] {
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::Started { addr, action: Action::Create } if addr == a)));
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::Finished { addr, .. } if addr == a)));
    }
}

#[tokio::test]
async fn a_transient_failure_while_rolling_back_is_retried() {
    let env = Env::new();
    env.apply(&counted("1")).await;
    env.fake.set_rollout(rolling(1));
    // s[0] updates, s[1] fails and stops the rollout; rolling s[0] back fails once, passingly.
    env.fake.fail("thing.s[1]", ErrorKind::Fatal, 1);
    env.fake.pass("thing.s[0]", 1);
    env.fake.fail("thing.s[0]", ErrorKind::Transient, 1);
    let (_, report, events) = env.apply(&counted("2")).await;
    assert_eq!(
        report.rolled_back,
        vec!["thing.s[0]".to_string()],
        "{report:?}"
    );
    assert_eq!(retries(&events, "thing.s[0]").len(), 1);
    assert_eq!(env.attr("thing.s[0]", "value"), Some(json!("1")));
}

#[tokio::test]
async fn a_pending_record_of_a_removed_block_is_deleted() {
    let env = Env::new();
    env.record("thing.gone", Status::Pending, json!({"id": "half"}));
    let (p, report, _) = env.apply(ONE).await;
    assert_eq!(action(&p, "thing.gone").0, Action::Delete);
    assert!(report.ok(), "{report:?}");
    assert_eq!(env.fake.ops("delete"), vec!["thing.gone"]);
    assert!(!env.state().resources.contains_key("thing.gone"));
}

// Deadlines: `timeouts` on a block, provider defaults, the engine's backstop, retries.

fn failure(report: &pipeline_engine::apply::ApplyReport, addr: &str) -> String {
    report
        .failed
        .iter()
        .find(|f| f.addr == addr)
        .map(|f| f.error.to_string())
        .unwrap_or_else(|| panic!("{addr} did not fail: {report:?}"))
}

#[tokio::test]
async fn a_create_past_timeouts_create_fails_naming_the_address_and_the_deadline() {
    let env = Env::new();
    env.fake.hang("thing.a");
    let (_, report, _) = env
        .apply(
            r#"thing "a" {
  value    = "1"
  timeouts = { create = "50ms" }
}
thing "b" { input = thing.a.id }
thing "c" { value = "c" }"#,
        )
        .await;
    let error = failure(&report, "thing.a");
    assert!(
        error.starts_with("thing.a: create did not finish within 50ms (timeouts.create)"),
        "{error}"
    );
    assert_eq!(
        env.fake.limits("apply", "thing.a"),
        vec![Some(Duration::from_millis(50))]
    );
    // A deadline is a failure like any other: dependents skipped, siblings go on, the
    // half-made instance tainted for the next plan to replace.
    assert!(report.skipped.iter().any(|(a, _)| a == "thing.b"));
    assert_eq!(env.status("thing.c"), Some(Status::Ready));
    assert_eq!(env.status("thing.a"), Some(Status::Tainted));
    assert!(!report.interrupted);
}

#[tokio::test]
async fn a_delete_past_its_deadline_fails_and_the_record_stays() {
    let env = Env::new();
    env.apply(ONE).await;
    // The block is gone from the stack, so the provider's default bounds its delete.
    env.fake.set_default_timeouts(Timeouts {
        delete: Some(Duration::from_millis(40)),
        ..Timeouts::default()
    });
    env.fake.hang("thing.a");
    let (p, report, _) = env.apply("").await;
    assert_eq!(action(&p, "thing.a").0, Action::Delete);
    let error = failure(&report, "thing.a");
    assert!(
        error.starts_with("thing.a: delete did not finish within 40ms (timeouts.delete)"),
        "{error}"
    );
    assert_eq!(env.status("thing.a"), Some(Status::Ready));
    // Released, the next apply deletes it.
    env.fake.release("thing.a");
    let (_, report, _) = env.apply("").await;
    assert!(report.ok(), "{report:?}");
    assert_eq!(env.status("thing.a"), None);
}

#[tokio::test]
async fn a_replace_bounds_its_delete_and_its_create_by_the_blocks_timeouts() {
    let env = Env::new();
    env.apply(r#"thing "a" { size = "s" }"#).await;
    let (p, report, _) = env
        .apply(
            r#"thing "a" {
  size     = "m"
  timeouts = { create = "7m", delete = "3m" }
}"#,
        )
        .await;
    assert_eq!(action(&p, "thing.a").0, Action::Replace);
    assert!(report.ok(), "{report:?}");
    assert_eq!(
        env.fake.limits("delete", "thing.a"),
        vec![Some(Duration::from_secs(180))]
    );
    assert_eq!(
        env.fake.limits("apply", "thing.a"),
        vec![None, Some(Duration::from_secs(420))]
    );
}

#[tokio::test]
async fn provider_default_timeouts_apply_where_the_stack_sets_none() {
    let env = Env::new();
    env.fake.set_default_timeouts(Timeouts {
        create: Some(Duration::from_secs(600)),
        update: Some(Duration::from_secs(300)),
        delete: None,
    });
    let stack = |v: &str| {
        format!(
            r#"thing "a" {{ value = "{v}" }}
thing "b" {{
  value    = "{v}"
  timeouts = {{ create = "1m" }}
}}"#
        )
    };
    let (_, report, _) = env.apply(&stack("1")).await;
    assert!(report.ok());
    let (_, report, _) = env.apply(&stack("2")).await;
    assert!(report.ok());
    let (min, ten, five) = (
        Some(Duration::from_secs(60)),
        Some(Duration::from_secs(600)),
        Some(Duration::from_secs(300)),
    );
    // Create, then update: what the block says wins, per operation; the rest are defaults.
    assert_eq!(env.fake.limits("apply", "thing.a"), vec![ten, five]);
    assert_eq!(env.fake.limits("apply", "thing.b"), vec![min, five]);
}

#[tokio::test]
async fn retries_stop_at_the_deadline() {
    let mut env = Env::new();
    // Each wait before a retry is longer than the whole deadline: no retry can start in time.
    env.retry = RetryPolicy {
        base: Duration::from_secs(2),
        ..RetryPolicy::default()
    };
    env.fake.fail("thing.a", ErrorKind::Transient, 3);
    let (_, report, events) = env
        .apply(
            r#"thing "a" {
  value    = "1"
  timeouts = { create = "1s" }
}"#,
        )
        .await;
    assert_eq!(env.fake.count("apply", "thing.a"), 1);
    assert!(retries(&events, "thing.a").is_empty());
    let error = failure(&report, "thing.a");
    assert!(
        error.contains(
            "not retried: timeouts.create of 1s ends before the next attempt; 1 attempt made"
        ),
        "{error}"
    );
    // Without a deadline the same errors are retried.
    let env = Env::new();
    env.fake.fail("thing.a", ErrorKind::Transient, 2);
    let (_, report, events) = env.apply(ONE).await;
    assert!(report.ok());
    assert_eq!(retries(&events, "thing.a").len(), 2);
}

#[tokio::test]
async fn a_call_that_ignores_its_deadline_is_stopped_by_the_engine() {
    let env = Env::new();
    env.fake.stall("thing.a");
    let (_, report, _) = env
        .apply(
            r#"thing "a" {
  value    = "1"
  timeouts = { create = "30ms" }
}
thing "c" { value = "c" }"#,
        )
        .await;
    let error = failure(&report, "thing.a");
    assert!(
        error.starts_with("thing.a: create did not finish within 30ms (timeouts.create)"),
        "{error}"
    );
    assert_eq!(env.status("thing.a"), Some(Status::Tainted));
    assert_eq!(env.status("thing.c"), Some(Status::Ready));
}

#[tokio::test]
async fn a_create_stopped_by_cancel_stays_pending_and_the_next_apply_replaces_it() {
    let env = Env::new();
    env.fake.hang("thing.a");
    let (p, config) = env.plan(ONE).await;
    let cancel = env.fake.cancel.clone();
    let fake = env.fake.clone();
    let watcher = tokio::spawn(async move {
        while fake.count("apply", "thing.a") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cancel.store(true, Ordering::SeqCst);
    });
    let (report, _) = env.apply_plan(&p, &config).await;
    watcher.await.unwrap();
    assert!(report.interrupted);
    assert!(failure(&report, "thing.a").contains("interrupted"));
    // What exists is unknown: recorded Pending, as after a crash.
    assert_eq!(env.status("thing.a"), Some(Status::Pending));
    env.fake.release("thing.a");
    env.fake.cancel.store(false, Ordering::SeqCst);
    let (p, report, _) = env.apply(ONE).await;
    let (a, reason) = action(&p, "thing.a");
    assert_eq!(a, Action::Replace);
    assert!(reason.unwrap_or_default().contains("interrupted"));
    assert!(report.ok());
    // Cleaned up once, made once: never done twice blindly.
    assert_eq!(env.fake.count("delete", "thing.a"), 1);
    assert_eq!(env.fake.count("apply", "thing.a"), 2);
    assert_eq!(env.status("thing.a"), Some(Status::Ready));
}

#[tokio::test]
async fn a_running_step_that_ends_within_the_grace_after_a_cancel_is_recorded_ready() {
    let mut env = Env::new();
    env.parallelism = 1;
    // Longer than the test: only a step that ends on its own finishes in time.
    env.grace = Duration::from_secs(600);
    env.fake.gate("thing.a");
    let (p, config) = env
        .plan(
            r#"thing "a" { value = "1" }
thing "b" { value = "b" }"#,
        )
        .await;
    let fake = env.fake.clone();
    let watcher = tokio::spawn(async move {
        while fake.count("apply", "thing.a") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        fake.cancel.store(true, Ordering::SeqCst);
        // Ctrl-C is seen (nothing new starts) before the running step ends.
        tokio::time::sleep(Duration::from_millis(100)).await;
        fake.open.store(true, Ordering::SeqCst);
    });
    let (report, _) = env.apply_plan(&p, &config).await;
    watcher.await.unwrap();
    assert!(report.interrupted);
    assert_eq!(env.status("thing.a"), Some(Status::Ready));
    // Nothing new started after the cancel: thing.b ran before thing.a or not at all.
    assert_eq!(
        env.fake.ops("*").last().map(String::as_str),
        Some("thing.a")
    );
    if env.fake.count("apply", "thing.b") == 0 {
        assert!(report
            .skipped
            .iter()
            .any(|(a, r)| a == "thing.b" && r.contains("interrupted")));
    }
}

#[test]
fn a_bad_timeouts_value_is_an_error_at_its_location() {
    let env = Env::new();
    let err = |stack: &str| env.load(stack).expect_err("refused");
    let e = err("thing \"a\" {\n  timeouts = { create = \"soon\" }\n}\n");
    assert!(
        e.contains("timeouts.create is not a duration: \"soon\""),
        "{e}"
    );
    assert!(e.contains("stack.hcl:2:25"), "{e}");
    let e = err("thing \"a\" {\n  timeouts = { read = \"1m\" }\n}\n");
    assert!(
        e.contains("`timeouts` has no `read`: it takes create, update and delete"),
        "{e}"
    );
    assert!(e.contains("stack.hcl:2:16"), "{e}");
    let e = err("thing \"a\" {\n  timeouts = \"1m\"\n}\n");
    assert!(
        e.contains("`timeouts` must be an object of durations"),
        "{e}"
    );
    assert!(e.contains("stack.hcl:2:14"), "{e}");
    let e = err("thing \"a\" {\n  timeouts = { delete = 5 }\n}\n");
    assert!(
        e.contains("timeouts.delete is not a duration written as a literal string"),
        "{e}"
    );
    assert!(env
        .load("thing \"a\" {\n  timeouts = { create = \"10m\", update = \"5m\", delete = \"90s\" }\n}\n")
        .is_ok());
}

#[tokio::test]
async fn a_reviewed_plan_carries_each_changes_dry_run_and_a_failing_one_names_the_instance() {
    let env = Env::new();
    env.apply("thing \"a\" { value = \"1\" }\nthing \"b\" { value = \"b\" }\n")
        .await;
    let (mut p, _) = env
        .plan("thing \"a\" { value = \"2\" }\nthing \"b\" { value = \"b\" }\nthing \"c\" { value = \"c\" }\n")
        .await;
    let before = env.fake.ops("*").len();
    plan::preview(&mut p, &env.registry, &env.ctx(), 4)
        .await
        .expect("preview");
    let shown = |addr: &str| {
        p.changes
            .iter()
            .find(|c| c.addr == addr)
            .map(|c| c.preview.clone())
            .unwrap()
    };
    assert_eq!(shown("thing.a")[0].diff, "-1\n+2");
    assert_eq!(shown("thing.c")[0].diff, "-\n+c");
    assert!(shown("thing.b").is_empty(), "a no-op is not previewed");
    // Only previews were asked for: nothing changed anywhere.
    let calls = env.fake.ops("*");
    assert_eq!(calls.len() - before, 2, "{calls:?}");
    assert_eq!(env.attr("thing.a", "value"), Some(json!("1")));
    // A saved plan keeps what was reviewed.
    let saved = Plan::from_saved(&p.to_saved().unwrap()).unwrap();
    let previews = |p: &Plan| {
        p.changes
            .iter()
            .map(|c| c.preview.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(previews(&saved), previews(&p));

    let (mut p, _) = env.plan("thing \"a\" { value = \"unreachable\" }\n").await;
    let e = plan::preview(&mut p, &env.registry, &env.ctx(), 4)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("thing.a") && e.contains("unreachable"), "{e}");
}

#[tokio::test]
async fn an_update_that_failed_part_way_records_what_exists_now() {
    let env = Env::new();
    env.apply(r#"thing "a" { value = "1" }"#).await;
    let id = env.attr("thing.a", "id");
    // Half of it moved: the provider says so with its error.
    let mut now = env.state().resources["thing.a"].attrs.clone();
    now.insert("value".into(), json!("half"));
    env.fake
        .partial
        .lock()
        .unwrap()
        .insert("thing.a".into(), now);
    env.fake.fail("thing.a", ErrorKind::Fatal, 1);
    let (_, report, _) = env.apply(r#"thing "a" { value = "2" }"#).await;
    assert!(!report.ok());
    assert_eq!(env.attr("thing.a", "value"), Some(json!("half")));
    assert_eq!(env.attr("thing.a", "id"), id);
    assert_eq!(env.status("thing.a"), Some(Status::Ready));
    // The next apply converges from there.
    env.fake.partial.lock().unwrap().clear();
    let (p, report, _) = env.apply(r#"thing "a" { value = "2" }"#).await;
    assert_eq!(action(&p, "thing.a").0, Action::Update);
    assert!(report.ok());
    assert_eq!(env.attr("thing.a", "value"), Some(json!("2")));
}
