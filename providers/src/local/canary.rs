//! The progressive canary of a local service: its arms are the staged instances (each
//! candidate answers on its own canary slot, `canary_target`) against what their slots serve
//! now; a candidate is unhealthy when its supervisor or process died or its health check failed
//! 3 times in a row. The steps, the judges and the report are `crate::progressive`'s.

use super::service::generation_dir;
use crate::progressive::{self, Arms};
use pipeline_engine::provider::{Aborted, JsonMap, Progress, ProviderCtx, Staged};
use pipeline_engine::step::Peers;
use pipeline_engine::value::ValueMap;
use std::sync::atomic::AtomicBool;

pub use crate::progressive::{clear_candidates, running, sweep_control_files};

fn hostport(m: &JsonMap, port_key: &str) -> Option<String> {
    let address = m
        .get("address")
        .and_then(|v| v.as_str())
        .unwrap_or("127.0.0.1");
    Some(format!("{address}:{}", m.get(port_key)?.as_u64()?))
}

/// A dead process, or 3 health checks failed in a row (one can be a blip).
fn unhealthy(ctx: &ProviderCtx, members: &[Staged]) -> Result<(), String> {
    for m in members {
        let Some(g) = m.staged.get("staged_generation").and_then(|g| g.as_u64()) else {
            continue;
        };
        let dir = generation_dir(&ctx.work_dir, &m.addr, Some(g));
        let ok = pipeline_supervise::status(&dir).is_some_and(|s| {
            s.supervisor_alive
                && s.child_alive
                && !(s.healthy == Some(false) && s.consecutive_failures >= 3)
        });
        if !ok {
            return Err(format!(
                "the candidate of {} (generation {g}) is not healthy; its log is {}",
                m.addr,
                dir.join(pipeline_supervise::REPLICA_LOG).display()
            ));
        }
    }
    Ok(())
}

pub fn analyze(
    ctx: &ProviderCtx,
    block: &str,
    config: &ValueMap,
    members: &[Staged],
    progress: Progress,
    cancel: &AtomicBool,
    peers: &Peers,
) -> Result<(), Aborted> {
    let baseline: Vec<String> = members
        .iter()
        .filter_map(|m| hostport(&m.prior, "port"))
        .collect();
    let candidate: Vec<String> = members
        .iter()
        .filter_map(|m| {
            m.staged
                .get("canary_target")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .collect();
    if candidate.len() != members.len() {
        // Nothing new was started (the update changed nothing the app runs): no canary needed.
        return Ok(());
    }
    let mut health = || unhealthy(ctx, members);
    progressive::analyze(
        &ctx.work_dir,
        block,
        config,
        Arms {
            baseline,
            candidate,
            replicas: members.len() as u32,
            health: &mut health,
        },
        progress,
        cancel,
        peers,
    )
}
