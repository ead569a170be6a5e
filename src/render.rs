//! Rendering: plans as reviewable diffs (colour on a terminal), JSON lines, apply progress.

use pipeline_engine::apply::{ApplyReport, Event};
use pipeline_engine::plan::{Action, AttrChange, Plan, ResourceChange};
use pipeline_engine::value::Value;
use std::fmt::Write;

#[derive(Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    pub fn green(&self, s: &str) -> String {
        self.paint("32", s)
    }
    pub fn yellow(&self, s: &str) -> String {
        self.paint("33", s)
    }
    pub fn red(&self, s: &str) -> String {
        self.paint("31", s)
    }
    pub fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
    fn action(&self, a: Action) -> String {
        let sym = format!("{:>3}", a.symbol());
        match a {
            Action::Create => self.green(&sym),
            Action::Update => self.yellow(&sym),
            Action::Delete => self.red(&sym),
            Action::Replace => format!("{}{}", self.red(" -/"), self.green("+")),
            Action::NoOp => sym,
        }
    }
}

fn shown(v: &Option<Value>, sensitive: bool) -> String {
    match v {
        None => "null".into(),
        Some(_) if sensitive => "(sensitive value)".into(),
        Some(v) => v.render(),
    }
}

fn is_multiline(v: &Option<Value>) -> bool {
    matches!(v, Some(Value::String(s)) if s.contains('\n'))
}

fn attr_line(out: &mut String, st: Style, action: Action, c: &AttrChange, width: usize) {
    let sym = match (action, &c.before, &c.after) {
        (Action::Create, _, _) => st.green("+"),
        (Action::Delete, _, _) => st.red("-"),
        (_, None, _) | (_, Some(Value::Null), _) => st.green("+"),
        (_, _, None) | (_, _, Some(Value::Null)) => st.red("-"),
        _ => st.yellow("~"),
    };
    let name = format!("{:width$}", c.name);
    let forces = if c.forces_replacement {
        st.red(" # forces replacement")
    } else {
        String::new()
    };
    if !c.sensitive
        && (is_multiline(&c.before) || is_multiline(&c.after))
        && action != Action::Create
    {
        let b = c.before.as_ref().and_then(|v| v.as_str()).unwrap_or("");
        let a = c.after.as_ref().and_then(|v| v.as_str());
        let _ = writeln!(out, "      {sym} {name} = <<-EOT{forces}");
        match a {
            Some(a) => {
                let diff = similar::TextDiff::from_lines(b, a);
                for group in diff.grouped_ops(3) {
                    for op in group {
                        for ch in diff.iter_changes(&op) {
                            let line = ch.value().trim_end_matches('\n');
                            let l = match ch.tag() {
                                similar::ChangeTag::Delete => st.red(&format!("- {line}")),
                                similar::ChangeTag::Insert => st.green(&format!("+ {line}")),
                                similar::ChangeTag::Equal => format!("  {line}"),
                            };
                            let _ = writeln!(out, "          {l}");
                        }
                    }
                }
            }
            None => {
                let _ = writeln!(out, "          (known after apply)");
            }
        }
        let _ = writeln!(out, "        EOT");
        return;
    }
    let value = match action {
        Action::Create => shown(&c.after, c.sensitive),
        Action::Delete => shown(&c.before, c.sensitive),
        _ if matches!(c.after, Some(Value::Unknown)) => {
            format!("{} -> (known after apply)", shown(&c.before, c.sensitive))
        }
        _ => format!(
            "{} -> {}",
            shown(&c.before, c.sensitive),
            shown(&c.after, c.sensitive)
        ),
    };
    let value = value.replace('\n', "\n          ");
    let _ = writeln!(out, "      {sym} {name} = {value}{forces}");
}

fn header(rc: &ResourceChange) -> String {
    let what = match rc.action {
        Action::Create => "will be created".to_string(),
        Action::Update => "will be updated in place".to_string(),
        Action::Replace => "must be replaced".to_string(),
        Action::Delete => "will be destroyed".to_string(),
        Action::NoOp => "is unchanged".to_string(),
    };
    match &rc.reason {
        Some(r) => format!("  # {} {what}\n  # ({r})", rc.addr),
        None => format!("  # {} {what}", rc.addr),
    }
}

pub fn plan_text(plan: &Plan, st: Style) -> String {
    let mut out = String::new();
    let drift: Vec<_> = plan.drift.iter().collect();
    let drift_empty = drift.is_empty();
    if !drift.is_empty() {
        let head = if plan.refresh_only {
            "Objects have changed outside of pipeline since the last apply:"
        } else {
            "Changed outside of pipeline since the last apply:"
        };
        let _ = writeln!(out, "{}\n", st.bold(head));
        for d in drift {
            if d.gone {
                let _ = writeln!(
                    out,
                    "  # {} is gone (deleted or stopped outside pipeline)",
                    d.addr
                );
            } else {
                let _ = writeln!(out, "  # {} has changed", d.addr);
                let w = d.changes.iter().map(|c| c.name.len()).max().unwrap_or(0);
                for c in &d.changes {
                    attr_line(&mut out, st, Action::Update, c, w);
                }
            }
        }
        let _ = writeln!(out);
    }
    if plan.refresh_only {
        if drift_empty {
            let _ = writeln!(
                out,
                "{}",
                st.green("No changes. No objects have changed outside of pipeline.")
            );
        } else {
            let _ = writeln!(
                out,
                "This is a refresh-only plan: pipeline changes nothing in the world. `pipeline apply -refresh-only` records these {} change(s) in the state.",
                plan.drift.len()
            );
        }
        return out;
    }
    let changes: Vec<&ResourceChange> = pipeline_engine::plan::sorted(plan)
        .into_iter()
        .filter(|c| c.action != Action::NoOp)
        .collect();
    if changes.is_empty() {
        let _ = writeln!(
            out,
            "{}",
            st.green("No changes. The running system matches the stack.")
        );
    } else {
        let _ = writeln!(out, "pipeline will perform these actions:\n");
        for rc in &changes {
            let _ = writeln!(out, "{}", st.bold(&header(rc)));
            let (kind, name) = rc
                .addr
                .rsplit_once('.')
                .map(|(k, n)| (k.rsplit('.').next().unwrap_or(k), n))
                .unwrap_or((&rc.kind, &rc.addr));
            let name = name.split('[').next().unwrap_or(name);
            let _ = writeln!(out, "{} {kind} \"{name}\" {{", st.action(rc.action));
            let attrs: Vec<AttrChange> = match rc.action {
                Action::Delete => rc
                    .before
                    .iter()
                    .flatten()
                    .map(|(k, v)| AttrChange {
                        name: k.clone(),
                        before: Some(v.clone()),
                        after: None,
                        forces_replacement: false,
                        sensitive: rc.sensitive.contains(k),
                    })
                    .filter(|c| !matches!(c.before, Some(Value::Null)))
                    .collect(),
                _ => rc.changes.clone(),
            };
            let w = attrs.iter().map(|c| c.name.len()).max().unwrap_or(0);
            for c in &attrs {
                attr_line(&mut out, st, rc.action, c, w);
            }
            preview_lines(&mut out, st, &rc.preview);
            let _ = writeln!(out, "    }}\n");
        }
        let (add, change, destroy) = plan.counts();
        let _ = writeln!(
            out,
            "{} {add} to add, {change} to change, {destroy} to destroy.",
            st.bold("Plan:")
        );
    }
    let outs: Vec<_> = plan
        .outputs
        .iter()
        .filter(|o| o.before != o.after)
        .collect();
    if !outs.is_empty() {
        let _ = writeln!(out, "\nChanges to outputs:");
        let w = outs.iter().map(|o| o.name.len()).max().unwrap_or(0);
        for o in outs {
            let c = AttrChange {
                name: o.name.clone(),
                before: o.before.clone(),
                after: o.after.clone(),
                forces_replacement: false,
                sensitive: o.sensitive,
            };
            let action = if o.before.is_none() {
                Action::Create
            } else if o.after.is_none() {
                Action::Delete
            } else {
                Action::Update
            };
            let mut line = String::new();
            attr_line(&mut line, st, action, &c, w);
            out.push_str(&line.replacen("      ", "  ", 1));
        }
    }
    out
}

/// Masked JSON of a value: sensitive values never leave the process.
/// A recorded resource's attributes, one `KEY = VALUE` line each (keys aligned, sensitive
/// values masked, a multi-line value indented), and its dependencies: `show` and `state show`.
pub fn resource_attrs(rs: &pipeline_engine::state::ResourceState, indent: &str) -> String {
    let mut out = String::new();
    let w = rs.attrs.keys().map(String::len).max().unwrap_or(0);
    for (k, v) in &rs.attrs {
        let shown = if rs.sensitive.contains(k) {
            "(sensitive value)".into()
        } else {
            Value::from_json(v).render()
        };
        let shown = shown.replace('\n', &format!("\n{indent}"));
        let _ = writeln!(out, "{indent}{k:w$} = {shown}");
    }
    if !rs.deps.is_empty() {
        let _ = writeln!(out, "{indent}# depends on: {}", rs.deps.join(", "));
    }
    out
}

pub fn masked_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Sensitive(_) => serde_json::Value::String("(sensitive value)".into()),
        Value::Unknown => serde_json::Value::Null,
        Value::List(l) => serde_json::Value::Array(l.iter().map(masked_json).collect()),
        Value::Map(m) => {
            serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), masked_json(v))).collect())
        }
        v => v.to_json(),
    }
}

/// Paths of the unknown parts of `v`. Inside a secret only the secret's own path is given: the
/// keys under it (a route built from a password, say) are part of the secret.
fn unknown_paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Unknown => out.push(prefix.to_string()),
        Value::Sensitive(inner) if !inner.is_known() => out.push(prefix.to_string()),
        Value::Map(m) => m.iter().for_each(|(k, v)| {
            unknown_paths(
                v,
                &if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                },
                out,
            )
        }),
        Value::List(l) => l
            .iter()
            .enumerate()
            .for_each(|(i, v)| unknown_paths(v, &format!("{prefix}[{i}]"), out)),
        _ => {}
    }
}

fn masked_map(m: &pipeline_engine::value::ValueMap, sensitive: &[String]) -> serde_json::Value {
    serde_json::Value::Object(
        m.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    if sensitive.contains(k) {
                        serde_json::Value::String("(sensitive value)".into())
                    } else {
                        masked_json(v)
                    },
                )
            })
            .collect(),
    )
}

/// One JSON object a line (schema in ARCHITECTURE.md).
/// Each machine's dry run of a change (`Provider::preview`): `# on HOST: summary`, then its diff.
fn preview_lines(
    out: &mut String,
    st: Style,
    preview: &[pipeline_engine::provider::TargetPreview],
) {
    use pipeline_engine::diag::escape_control;
    // What a host sends is shown, never obeyed: control characters escaped.
    for p in preview {
        let head = format!(
            "# on {}: {}",
            escape_control(&p.target),
            escape_control(&p.summary)
        );
        let _ = writeln!(out, "\n      {}", st.bold(&head));
        for l in p.diff.lines() {
            let l = &escape_control(l);
            let shown = if l.starts_with('+') && !l.starts_with("+++") {
                st.green(l)
            } else if l.starts_with('-') && !l.starts_with("---") {
                st.red(l)
            } else {
                l.to_string()
            };
            let _ = writeln!(out, "        {shown}");
        }
    }
}

pub fn plan_json_lines(plan: &Plan) -> Vec<serde_json::Value> {
    use serde_json::json;
    let mut out = Vec::new();
    for d in &plan.drift {
        out.push(
            json!({"type": "resource_drift", "address": d.addr, "gone": d.gone,
            "changed": d.changes.iter().map(|c| c.name.clone()).collect::<Vec<_>>()}),
        );
    }
    for rc in pipeline_engine::plan::sorted(plan) {
        let mut unknown = Vec::new();
        for (k, v) in rc.after.iter().flatten() {
            if rc.sensitive.contains(k) {
                if !v.is_known() {
                    unknown.push(k.clone());
                }
            } else {
                unknown_paths(v, k, &mut unknown);
            }
        }
        out.push(json!({
            "type": "planned_change",
            "address": rc.addr,
            "kind": rc.kind,
            "provider": rc.provider,
            "action": rc.action,
            "reason": rc.reason,
            "changed": rc.changes.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
            "replace_paths": rc.changes.iter().filter(|c| c.forces_replacement).map(|c| c.name.clone()).collect::<Vec<_>>(),
            "before": rc.before.as_ref().map(|b| masked_map(b, &rc.sensitive)),
            "after": rc.after.as_ref().map(|a| masked_map(a, &rc.sensitive)),
            "after_unknown": unknown,
            "depends_on": rc.deps,
            "preview": rc.preview,
        }));
    }
    for o in &plan.outputs {
        let mask = |v: &Option<Value>| {
            v.as_ref().map(|v| {
                if o.sensitive {
                    json!("(sensitive value)")
                } else {
                    masked_json(v)
                }
            })
        };
        out.push(json!({"type": "output", "name": o.name, "before": mask(&o.before), "after": mask(&o.after), "sensitive": o.sensitive}));
    }
    let (add, change, remove) = plan.counts();
    out.push(json!({"type": "change_summary", "add": add, "change": change, "remove": remove, "drift": plan.drift.len()}));
    out
}

pub fn event_json(e: &Event) -> serde_json::Value {
    use serde_json::json;
    match e {
        Event::Started { addr, action } => {
            json!({"type": "apply_start", "address": addr, "action": action})
        }
        Event::Finished {
            addr,
            action,
            elapsed,
        } => {
            json!({"type": "apply_complete", "address": addr, "action": action, "elapsed_ms": elapsed.as_millis() as u64})
        }
        Event::Failed {
            addr,
            action,
            error,
        } => json!({"type": "apply_errored", "address": addr, "action": action, "error": error}),
        Event::Skipped { addr, reason } => {
            json!({"type": "apply_skipped", "address": addr, "reason": reason})
        }
        Event::RolledBack { addr } => json!({"type": "apply_rolled_back", "address": addr}),
        Event::Progress { addr, message } => {
            json!({"type": "apply_progress", "address": addr, "message": message})
        }
        // The same line as before artifacts were typed: "canary evidence written to PATH".
        Event::Artifact { addr, kind, path } => {
            json!({"type": "apply_progress", "address": addr, "message": format!("{} written to {}", kind.name(), path.display())})
        }
        Event::Retrying {
            addr,
            attempt,
            of,
            kind,
            delay,
            error,
        } => {
            json!({"type": "apply_retry", "address": addr, "attempt": attempt, "of": of, "error_kind": kind.name(), "delay_ms": delay.as_millis() as u64, "error": error})
        }
    }
}

pub fn event_line(e: &Event) -> String {
    let ing = |a: &Action| match a {
        Action::Create => "Creating...",
        Action::Update => "Modifying...",
        Action::Replace => "Replacing...",
        Action::Delete => "Destroying...",
        Action::NoOp => "",
    };
    match e {
        Event::Started { addr, action } => format!("{addr}: {}", ing(action)),
        Event::Finished {
            addr,
            action,
            elapsed,
        } => format!(
            "{addr}: {} after {:.1}s",
            match action {
                Action::Create => "Creation complete",
                Action::Update => "Modifications complete",
                Action::Replace => "Replacement complete",
                Action::Delete => "Destruction complete",
                Action::NoOp => "Done",
            },
            elapsed.as_secs_f64()
        ),
        Event::Failed { addr, error, .. } => format!("{addr}: FAILED: {error}"),
        Event::Skipped { addr, reason } => format!("{addr}: skipped ({reason})"),
        Event::RolledBack { addr } => {
            format!("{addr}: rolled back to its previous version (the rollout stopped)")
        }
        Event::Progress { addr, message } => format!("{addr}: {message}"),
        Event::Artifact { addr, kind, path } => {
            format!("{addr}: {} written to {}", kind.name(), path.display())
        }
        Event::Retrying {
            addr,
            attempt,
            of,
            kind,
            delay,
            error,
        } => format!(
            "{addr}: attempt {attempt} of {of} in {:.1}s after a {} error: {error}",
            delay.as_secs_f64(),
            kind.name()
        ),
    }
}

pub fn report_text(r: &ApplyReport, st: Style, destroy: bool) -> String {
    let mut out = String::new();
    let count = |a: Action| r.succeeded.iter().filter(|(_, x)| *x == a).count();
    let (added, changed, destroyed) = (
        count(Action::Create) + count(Action::Replace),
        count(Action::Update),
        count(Action::Delete) + count(Action::Replace),
    );
    if r.ok() {
        let _ = if destroy {
            writeln!(
                out,
                "{} {destroyed} destroyed.",
                st.green(&st.bold("Destroy complete!"))
            )
        } else {
            writeln!(
                out,
                "{} {added} added, {changed} changed, {destroyed} destroyed.",
                st.green(&st.bold("Apply complete!"))
            )
        };
        return out;
    }
    let _ = writeln!(
        out,
        "{} {added} added, {changed} changed, {destroyed} destroyed; {} failed, {} skipped.",
        st.red(&st.bold(if r.interrupted {
            "Apply interrupted."
        } else {
            "Apply failed."
        })),
        r.failed.len(),
        r.skipped.len()
    );
    if !r.succeeded.is_empty() {
        let _ = writeln!(out, "\nSucceeded:");
        for (a, act) in &r.succeeded {
            let _ = writeln!(out, "  {a} ({})", act.verb());
        }
    }
    if !r.failed.is_empty() {
        let _ = writeln!(out, "\nFailed:");
        for f in &r.failed {
            let _ = writeln!(
                out,
                "  {}: {}",
                st.red(&f.addr),
                f.error.to_string().replace('\n', "\n    ")
            );
        }
    }
    if !r.rolled_back.is_empty() {
        let _ = writeln!(out, "\nRolled back (the rollout stopped at the failure):");
        for a in &r.rolled_back {
            let _ = writeln!(out, "  {a}");
        }
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(out, "\nSkipped:");
        for (a, why) in &r.skipped {
            let _ = writeln!(out, "  {a}: {why}");
        }
    }
    let _ = writeln!(
        out,
        "\nState records exactly what was done. Fix the failures and run `pipeline apply` again."
    );
    out
}

/// The plan's instance graph as DOT: one node per instance (its action in the label); a
/// dependency on a block is an edge to each of its instances.
pub fn plan_dot(plan: &Plan) -> String {
    let mut out = String::from("digraph pipeline {\n  rankdir = \"LR\";\n  node [shape = box];\n");
    let mut instances: std::collections::HashMap<&str, Vec<&str>> = Default::default();
    for c in &plan.changes {
        instances
            .entry(pipeline_engine::plan::resource_addr(&c.addr))
            .or_default()
            .push(&c.addr);
    }
    for c in &plan.changes {
        let _ = writeln!(
            out,
            "  {:?} [label = {:?}];",
            c.addr,
            format!("{}\n{:?}", c.addr, c.action)
        );
        for d in &c.deps {
            for inst in instances.get(d.as_str()).into_iter().flatten() {
                let _ = writeln!(out, "  {:?} -> {:?};", c.addr, inst);
            }
        }
    }
    out.push_str("}\n");
    out
}

/// `pipeline canary --simulate` as a table.
pub fn simulation_text(sim: &pipeline_ops::canary::Simulation) -> String {
    use pipeline_analysis::Scenario;
    let mut out = String::new();
    macro_rules! outln {
        ($($a:tt)*) => {{
            let _ = writeln!(out, $($a)*);
        }};
    }
    let cfg = Scenario::standard_config();
    let describe: Vec<String> = cfg
        .metrics
        .iter()
        .map(|m| {
            format!(
                "{} (tolerance {}%{}{})",
                m.name,
                100.0 * m.tolerance,
                if m.abs_tolerance > 0.0 {
                    format!(" and {} pp", 100.0 * m.abs_tolerance)
                } else {
                    String::new()
                },
                if m.critical { ", critical" } else { "" }
            )
        })
        .collect();
    outln!(
        "Sequential judge on simulated traffic: {} req/s per arm, one look a second, at most {} s a run; confidence {}; {}; seed {:#x}.\n",
        sim.scenarios[0].rate_per_sec,
        sim.scenarios[0].max_secs,
        cfg.confidence,
        describe.join(", "),
        sim.seed
    );
    outln!(
        "{:<22}{:>6}  {:>7}  {:<22}  {:>13}  {:>10}  {:>10}  {:>7}  {:>9}",
        "scenario",
        "runs",
        "failed",
        "rate",
        "detect median",
        "detect p95",
        "detect max",
        "passed",
        "undecided"
    );
    for (s, oc) in sim.scenarios.iter().zip(&sim.results) {
        let aa = s.latency_factor == 1.0 && s.baseline_error_rate == s.candidate_error_rate;
        let rate = format!(
            "{} {:.2}%",
            if aa { "false failures" } else { "detected" },
            100.0 * oc.fail_rate()
        );
        let q = |x: Option<u64>| x.map_or("-".to_string(), |v| v.to_string());
        outln!(
            "{:<22}{:>6}  {:>7}  {:<22}  {:>13}  {:>10}  {:>10}  {:>7}  {:>9}",
            s.name,
            oc.runs,
            oc.failures,
            rate,
            q(oc.detection_quantile(0.5)),
            q(oc.detection_quantile(0.95)),
            q(oc.detection_quantile(1.0)),
            oc.passes,
            oc.undecided
        );
    }
    outln!("\nTimes are seconds of traffic until the judge failed the candidate; A/A failures are false failures.");
    for (s, oc) in sim.scenarios.iter().zip(&sim.results) {
        if oc.passes > 0 {
            outln!(
                "{}: {} run(s) passed early, after {} s median, {} s p95.",
                s.name,
                oc.passes,
                oc.pass_quantile(0.5).unwrap_or(0),
                oc.pass_quantile(0.95).unwrap_or(0)
            );
        }
    }
    outln!("Simulated in {:.1} s.", sim.elapsed.as_secs_f64());
    out
}

/// A running canary's progress line (stderr).
pub fn canary_progress(p: &pipeline_ops::canary::Progress) -> String {
    use pipeline_ops::canary::Progress;
    match p {
        Progress::Starting {
            baseline,
            candidate,
            replicas,
        } => format!(
            "canary: building and starting {baseline} and {candidate} ({replicas} replica(s) each)..."
        ),
        Progress::Load {
            method,
            path,
            rate,
            duration,
        } => format!("canary: {method} {path} at {rate} req/s for {duration:?} through the balancer..."),
        Progress::StoppedEarly {
            after,
            regressed: Some(metric),
        } => format!(
            "canary: stopped early after {:.1}s of traffic: `{metric}` regressed (sequential test)",
            after.as_secs_f64()
        ),
        Progress::StoppedEarly {
            after,
            regressed: None,
        } => format!(
            "canary: stopped early after {:.1}s of traffic: every metric is within its tolerance (sequential test)",
            after.as_secs_f64()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline_engine::provider::ErrorKind;

    #[test]
    fn a_hosts_dry_run_is_shown_under_its_change_with_control_characters_escaped() {
        let mut out = String::new();
        let p = pipeline_engine::provider::TargetPreview {
            target: "web01".into(),
            summary: "1 changed\x1b[2J".into(),
            diff: "--- before: /etc/a\n+++ after: /etc/a\n-old\n+new\x07".into(),
        };
        preview_lines(&mut out, Style { color: false }, &[p]);
        assert_eq!(
            out,
            "\n      # on web01: 1 changed\\u{1b}[2J\n        --- before: /etc/a\n        +++ after: /etc/a\n        -old\n        +new\\u{7}\n"
        );
    }

    #[test]
    fn a_retry_is_printed_with_its_attempt_kind_wait_and_error() {
        let e = Event::Retrying {
            addr: "service.x[0]".into(),
            attempt: 2,
            of: 4,
            kind: ErrorKind::Throttled,
            delay: std::time::Duration::from_millis(1500),
            error: "slow down".into(),
        };
        assert_eq!(
            event_line(&e),
            "service.x[0]: attempt 2 of 4 in 1.5s after a throttled error: slow down"
        );
        let j = event_json(&e);
        assert_eq!(j["type"], "apply_retry");
        assert_eq!(j["address"], "service.x[0]");
        assert_eq!(
            (j["attempt"].as_u64(), j["of"].as_u64()),
            (Some(2), Some(4))
        );
        assert_eq!(j["error_kind"], "throttled");
        assert_eq!(j["delay_ms"], 1500);
        assert_eq!(j["error"], "slow down");
    }
}
