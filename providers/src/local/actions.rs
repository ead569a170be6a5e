//! Named actions of a local service (`Provider::action`): `rollback` to the standby generation,
//! and `canary`, `promote`, `abort` of a progressive canary an apply is running for the block.

use super::canary::{command_file, control_file, result_file, running};
use super::service;
use pipeline_engine::provider::{ActionOutput, ActionSchema, JsonMap, ProviderCtx, ProviderError};
use std::time::{Duration, Instant};

pub fn schemas(kind: &str) -> Vec<ActionSchema> {
    if kind != "service" {
        return Vec::new();
    }
    vec![
        ActionSchema {
            name: "rollback",
            about: "switch a blue-green instance back to its standby generation",
            args: vec![],
            changes_record: true,
        },
        ActionSchema {
            name: "canary",
            about: "whether an apply runs a canary of the instance's block, and at which step",
            args: vec![],
            changes_record: false,
        },
        ActionSchema {
            name: "promote",
            about: "tell the running canary of the instance's block to promote its candidates",
            args: vec![],
            changes_record: false,
        },
        ActionSchema {
            name: "abort",
            about: "tell the running canary of the instance's block to stop",
            args: vec![],
            changes_record: false,
        },
    ]
}

/// `service.web[2]` → `service.web`.
fn block_of(addr: &str) -> &str {
    match addr.rfind('[') {
        Some(i) if addr.ends_with(']') => &addr[..i],
        _ => addr,
    }
}

fn step_of(ctx: &ProviderCtx, block: &str) -> u64 {
    std::fs::read_to_string(control_file(&ctx.work_dir, block))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["step"].as_u64())
        .unwrap_or(0)
}

/// Blocking: waits up to 30 s for a signalled canary to end.
pub fn run(
    ctx: &ProviderCtx,
    addr: &str,
    record: &JsonMap,
    name: &str,
) -> Result<ActionOutput, ProviderError> {
    let block = block_of(addr);
    let mut out = JsonMap::new();
    match name {
        "rollback" => {
            let record = service::rollback(ctx, addr, record)?;
            return Ok(ActionOutput {
                record: Some(record),
                ..Default::default()
            });
        }
        "canary" => {
            let on = running(&ctx.work_dir, block);
            out.insert("running".into(), on.into());
            if on {
                out.insert("step".into(), step_of(ctx, block).into());
            }
        }
        "promote" | "abort" => {
            let ctl = control_file(&ctx.work_dir, block);
            if !running(&ctx.work_dir, block) {
                return Err(ProviderError::not_found(format!("no canary of {block} is running"))
                    .help("a canary runs during `pipeline apply` of a service with update = { strategy = \"canary\" }"));
            }
            let step = step_of(ctx, block);
            let result = result_file(&ctx.work_dir, block);
            let _ = std::fs::remove_file(&result);
            std::fs::write(command_file(&ctx.work_dir, block), name).map_err(|e| {
                ProviderError::new(format!("cannot signal the canary of {block}: {e}"))
            })?;
            let until = Instant::now() + Duration::from_secs(30);
            while ctl.exists() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
            if ctl.exists() {
                return Err(ProviderError::new(format!(
                    "the canary of {block} did not answer within 30 s; its apply may be stuck"
                )));
            }
            let ended = std::fs::read_to_string(&result).unwrap_or_default();
            let _ = std::fs::remove_file(&result);
            out.insert("step".into(), step.into());
            out.insert("ended".into(), ended.into());
        }
        _ => {
            return Err(pipeline_engine::provider::unknown_action(
                "local",
                "service",
                addr,
                name,
                &schemas("service"),
            ))
        }
    }
    Ok(ActionOutput::output(out))
}
