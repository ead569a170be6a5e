//! `show [PLANFILE]`: a saved plan as `plan` showed it when it saved it, or the recorded state.

use crate::render::{self, Style};
use anyhow::Result;
use pipeline_engine::state::State;
use pipeline_engine::value::Value;
use pipeline_ops::Workspace;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

pub fn show(ws: &Workspace, style: Style, file: Option<PathBuf>, json: bool) -> Result<ExitCode> {
    let mut so = std::io::stdout().lock();
    match file {
        // The same renderer as `plan`, over what the plan file holds: what `plan -out` printed.
        Some(path) => {
            let plan = pipeline_ops::plan::read_plan_to_show(&path)?;
            if json {
                for l in render::plan_json_lines(&plan) {
                    writeln!(so, "{l}")?;
                }
            } else {
                write!(so, "{}", render::plan_text(&plan, style))?;
            }
        }
        None => {
            let st = ws.state()?;
            if json {
                writeln!(so, "{}", state_json(&st))?;
            } else {
                write!(so, "{}", state_text(&st, style))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A recorded attribute as shown: masked when the record marks it sensitive.
fn attr_json(v: &serde_json::Value, sensitive: bool) -> serde_json::Value {
    if sensitive {
        serde_json::Value::String("(sensitive value)".into())
    } else {
        render::masked_json(&Value::from_json(v))
    }
}

/// Every recorded instance with its attributes, then the outputs; secrets masked.
fn state_text(st: &State, style: Style) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if st.resources.is_empty() && st.outputs.is_empty() {
        let _ = writeln!(out, "The state is empty: nothing has been applied here.");
        return out;
    }
    for (addr, rs) in &st.resources {
        let status = match rs.status {
            pipeline_engine::state::Status::Ready => String::new(),
            s => format!(", {s:?}"),
        };
        let _ = writeln!(
            out,
            "{}",
            style.bold(&format!(
                "# {addr} ({} by {}{status}):",
                rs.kind, rs.provider
            ))
        );
        out.push_str(&render::resource_attrs(rs, "    "));
        let _ = writeln!(out);
    }
    if !st.outputs.is_empty() {
        let _ = writeln!(out, "Outputs:\n");
        let w = st.outputs.keys().map(String::len).max().unwrap_or(0);
        for (k, o) in &st.outputs {
            let v = if o.sensitive {
                "(sensitive value)".to_string()
            } else {
                Value::from_json(&o.value).render()
            };
            let _ = writeln!(out, "{k:w$} = {}", v.replace('\n', "\n    "));
        }
    }
    out
}

/// One JSON object (schema in README, `pipeline show -json`).
fn state_json(st: &State) -> serde_json::Value {
    use serde_json::json;
    let resources: Vec<serde_json::Value> = st
        .resources
        .iter()
        .map(|(addr, rs)| {
            let attrs: serde_json::Map<String, serde_json::Value> = rs
                .attrs
                .iter()
                .map(|(k, v)| (k.clone(), attr_json(v, rs.sensitive.contains(k))))
                .collect();
            json!({"address": addr, "kind": rs.kind, "provider": rs.provider, "status": rs.status,
                "attributes": attrs, "sensitive": rs.sensitive, "depends_on": rs.deps})
        })
        .collect();
    let outputs: serde_json::Map<String, serde_json::Value> = st
        .outputs
        .iter()
        .map(|(k, o)| {
            (
                k.clone(),
                json!({"value": attr_json(&o.value, o.sensitive), "sensitive": o.sensitive}),
            )
        })
        .collect();
    json!({"type": "state", "serial": st.serial, "lineage": st.lineage, "resources": resources, "outputs": outputs})
}
