//! `state`, `output`, `force-unlock`: the recorded state shown, instances forgotten, the
//! outputs read, a lock released.

use crate::commands::StateCmd;
use anyhow::{anyhow, Result};
use pipeline_engine::state::{OutputState, Status};
use pipeline_engine::value::Value;
use pipeline_ops::Workspace;
use std::collections::BTreeMap;
use std::process::ExitCode;

pub fn state(ws: &Workspace, sc: StateCmd) -> Result<ExitCode> {
    match sc {
        StateCmd::List => {
            for (addr, rs) in &ws.state()?.resources {
                match rs.status {
                    Status::Ready => println!("{addr}"),
                    s => println!("{addr} ({s:?})"),
                }
            }
        }
        StateCmd::Show { addr } => {
            let st = ws.state()?;
            let rs = st.resources.get(&addr).ok_or_else(|| {
                anyhow!("{addr} is not in the state\n  = help: `pipeline state list` shows what is")
            })?;
            println!("# {addr} ({} by {}, {:?})", rs.kind, rs.provider, rs.status);
            print!("{}", crate::render::resource_attrs(rs, "  "));
        }
        StateCmd::Rm { addrs } => {
            for a in pipeline_ops::workspace::forget(ws, &addrs)? {
                println!("Removed {a} from the state; what it described was left as it is.");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `NAME = VALUE` a line, secrets masked.
pub fn print_outputs(outputs: &BTreeMap<String, OutputState>) {
    for (k, o) in outputs {
        let v = if o.sensitive {
            "(sensitive value)".to_string()
        } else {
            Value::from_json(&o.value).render()
        };
        println!("{k} = {v}");
    }
}

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
        None => print_outputs(&state.outputs),
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
