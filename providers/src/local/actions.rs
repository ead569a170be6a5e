//! Named actions of a local service (`Provider::action`): `rollback` to the standby generation,
//! and `canary`, `promote`, `abort` of a progressive canary an apply is running for the block.

use super::service;
use pipeline_engine::provider::{ActionOutput, ActionSchema, JsonMap, ProviderCtx, ProviderError};

pub fn schemas(kind: &str) -> Vec<ActionSchema> {
    if kind != "service" {
        return Vec::new();
    }
    let mut v = vec![ActionSchema {
        name: "rollback",
        about: "switch a blue-green instance back to its standby generation",
        args: vec![],
        changes_record: true,
    }];
    v.extend(crate::progressive::control_schemas());
    v
}

/// `service.web[2]` → `service.web`.
fn block_of(addr: &str) -> &str {
    match addr.rfind('[') {
        Some(i) if addr.ends_with(']') => &addr[..i],
        _ => addr,
    }
}

/// Blocking: waits up to 30 s for a signalled canary to end.
pub fn run(
    ctx: &ProviderCtx,
    addr: &str,
    record: &JsonMap,
    name: &str,
) -> Result<ActionOutput, ProviderError> {
    match name {
        "rollback" => {
            let record = service::rollback(ctx, addr, record)?;
            Ok(ActionOutput {
                record: Some(record),
                ..Default::default()
            })
        }
        "canary" | "promote" | "abort" => {
            crate::progressive::control(&ctx.work_dir, block_of(addr), name)
                .map(ActionOutput::output)
        }
        _ => Err(pipeline_engine::provider::unknown_action(
            "local",
            "service",
            addr,
            name,
            &schemas("service"),
        )),
    }
}
