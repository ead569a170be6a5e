//! `output`, `force-unlock`: read the recorded outputs, release a lock.

use crate::ops::Workspace;
use anyhow::{anyhow, Result};
use std::process::ExitCode;

pub fn output(ws: &Workspace, name: Option<String>, json: bool) -> Result<ExitCode> {
    let state = ws.state()?;
    match name {
        Some(n) => {
            let o = state.outputs.get(&n).ok_or_else(|| {
                anyhow!(
                    "no output named {n:?}\n  = help: outputs: {}",
                    state.outputs.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            if json {
                println!("{}", o.value);
            } else if let Some(s) = o.value.as_str() {
                println!("{s}");
            } else {
                println!("{}", serde_json::to_string_pretty(&o.value)?);
            }
        }
        None if json => {
            let m: serde_json::Map<String, serde_json::Value> = state
                .outputs
                .iter()
                .map(|(k, o)| {
                    (
                        k.clone(),
                        serde_json::json!({"value": o.value, "sensitive": o.sensitive}),
                    )
                })
                .collect();
            println!("{}", serde_json::Value::Object(m));
        }
        None => {
            for (k, o) in &state.outputs {
                let v = if o.sensitive {
                    "(sensitive value)".to_string()
                } else {
                    pipeline_engine::value::Value::from_json(&o.value).render()
                };
                println!("{k} = {v}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn force_unlock(ws: &Workspace, id: &str, force: bool) -> Result<ExitCode> {
    let info =
        pipeline_engine::state::force_unlock(&ws.dir, id, force).map_err(|e| anyhow!("{e}"))?;
    if pipeline_engine::state::owner_alive(&info) {
        eprintln!(
            "warning: pid {} on {} still runs `{}`; the next run may change the state alongside it, and what either one starts may be left out of the state (the next apply or destroy stops such orphans).",
            info.pid, info.host, info.operation
        );
    }
    println!(
        "Removed the lock held by {}@{} (pid {}, `{}`, since {}).",
        info.who, info.host, info.pid, info.operation, info.created
    );
    Ok(ExitCode::SUCCESS)
}
