//! `rollback` and `promote` of a service: act on the canary an apply is running, or switch a
//! blue-green service back to its standby generation, through its provider's actions.

use crate::workspace::{recorded_ctx, Workspace};
use anyhow::{anyhow, bail, Result};
use pipeline_engine::state::{self, StateStore};
use std::time::{Duration, Instant};

/// The block a command names: `NAME` as given when it has a kind (`service.web`); otherwise
/// the one block of replicas (a kind whose schema has `instances_attr`, whoever provides it)
/// called `NAME` in the state or, when `stack` is given, in that stack. None or several is an
/// error naming the ones there are.
pub fn replica_block(
    ws: &Workspace,
    name: &str,
    stack: Option<&std::path::Path>,
) -> Result<String> {
    if name.contains('.') {
        return Ok(name.to_string());
    }
    let replicas = |kind: &str, provider: &str| {
        ws.registry
            .schema(kind, Some(provider))
            .is_some_and(|(_, k)| k.instances_attr.is_some())
    };
    let mut blocks = std::collections::BTreeSet::new();
    for (addr, r) in &ws.state()?.resources {
        if replicas(&r.kind, &r.provider) {
            blocks.insert(addr.split('[').next().unwrap_or(addr).to_string());
        }
    }
    if let Some(stack) = stack {
        let (config, _) = ws.load(stack)?;
        for (addr, r) in &config.modules[0].resources {
            if replicas(&r.kind, &r.provider) {
                blocks.insert(addr.clone());
            }
        }
    }
    let named: Vec<&String> = blocks
        .iter()
        .filter(|b| b.rsplit('.').next() == Some(name))
        .collect();
    match named.as_slice() {
        [one] => Ok(one.to_string()),
        [] => bail!(
            "no block of replicas is called {name:?}\n  = help: {}",
            if blocks.is_empty() {
                "the stack and the state have none; name a block with its kind, e.g. `service.web`"
                    .to_string()
            } else {
                format!(
                    "name one of: {}",
                    blocks.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            }
        ),
        many => bail!(
            "{name:?} names several blocks: {}\n  = help: name one with its kind",
            many.iter()
                .map(|b| b.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// What `rollback` did.
pub enum Rollback {
    /// An apply was running a canary of the service: it was stopped at `step` percent and
    /// ended as `ended`; the candidate gets no traffic.
    CanaryStopped { step: u64, ended: String },
    /// Every instance switched back to its previous generation.
    Switched { instances: usize, elapsed: Duration },
}

/// Stop the canary of `block` an apply is running, else (under the state lock) switch every
/// instance of it back to its standby generation.
pub async fn rollback(
    ws: &Workspace,
    block: &str,
    on_stale: &mut dyn FnMut(&state::LockInfo),
) -> Result<Rollback> {
    if canary_running(ws, block).await {
        let (step, ended) = signal_canary(ws, block, "abort").await?;
        if ended == "promoted" {
            bail!("{block}: the canary at {step}% was promoted before it could be stopped; roll back with a deploy of the previous version");
        }
        return Ok(Rollback::CanaryStopped { step, ended });
    }
    let _lock = crate::apply::lock(ws, "rollback", on_stale)?;
    let start = Instant::now();
    let instances = switch_back(ws, block).await?;
    Ok(Rollback::Switched {
        instances,
        elapsed: start.elapsed(),
    })
}

/// Promote the canary of `block` an apply is running now; returns the step it was at.
pub async fn promote(ws: &Workspace, block: &str) -> Result<u64> {
    let (step, ended) = signal_canary(ws, block, "promote").await?;
    if ended != "promoted" {
        bail!("{block}: the canary at {step}% ended before the promotion: {ended}");
    }
    Ok(step)
}

/// Switch every instance of `block` to its standby generation (its provider's `rollback`
/// action) and record it. Holds no lock itself.
pub async fn switch_back(ws: &Workspace, block: &str) -> Result<usize> {
    let mut store = StateStore::open(&ws.dir).map_err(|e| anyhow!("{e}"))?;
    let addrs: Vec<String> = store
        .state()
        .resources
        .keys()
        .filter(|a| pipeline_engine::plan::resource_addr(a) == block)
        .cloned()
        .collect();
    if addrs.is_empty() {
        bail!("{block} is not in the state\n  = help: `pipeline state list` shows what is");
    }
    let ctx = recorded_ctx(ws)?;
    // Every instance switches back at once: a block of five takes one switch's time, not five.
    let mut switching = tokio::task::JoinSet::new();
    for (i, a) in addrs.iter().enumerate() {
        let rs = store.state().resources[a].clone();
        let p = ws
            .registry
            .provider_of(&rs)
            .ok_or_else(|| anyhow!("{a}: no provider `{}` in this binary", rs.provider))?
            .clone();
        let (ctx, a) = (ctx.clone(), a.clone());
        switching.spawn(async move {
            let out = p
                .action(
                    &ctx,
                    &rs.kind,
                    &a,
                    &rs.attrs,
                    "rollback",
                    &Default::default(),
                )
                .await;
            (i, rs, out)
        });
    }
    let mut done: Vec<_> = switching.join_all().await;
    done.sort_by_key(|(i, _, _)| *i);
    // Record every switch that happened before reporting one that did not.
    let mut first_error = None;
    for (i, mut rs, out) in done {
        match out {
            Ok(out) => {
                let Some(record) = out.record else {
                    continue;
                };
                rs.attrs = record;
                store
                    .record(state::JournalEntry::Set {
                        addr: addrs[i].clone(),
                        resource: rs,
                    })
                    .map_err(|e| anyhow!("{e}"))?;
            }
            Err(e) => {
                first_error.get_or_insert_with(|| anyhow!("{}: {e}", addrs[i]));
            }
        }
    }
    if let Some(e) = first_error {
        store.compact().map_err(|e| anyhow!("{e}"))?;
        return Err(e);
    }
    store.compact().map_err(|e| anyhow!("{e}"))?;
    Ok(addrs.len())
}

/// Run a named action of `block`'s provider on its first recorded instance (a canary's
/// `canary`, `promote`, `abort` are about the whole block). None: the state has no instance.
async fn block_action(
    ws: &Workspace,
    block: &str,
    name: &str,
) -> Result<Option<pipeline_engine::provider::ActionOutput>> {
    let st = ws.state()?;
    let Some((addr, rs)) = st
        .resources
        .iter()
        .find(|(a, _)| pipeline_engine::plan::resource_addr(a) == block)
    else {
        return Ok(None);
    };
    let p = ws
        .registry
        .provider_of(rs)
        .ok_or_else(|| anyhow!("{addr}: no provider `{}` in this binary", rs.provider))?;
    p.action(
        &recorded_ctx(ws)?,
        &rs.kind,
        addr,
        &rs.attrs,
        name,
        &Default::default(),
    )
    .await
    .map(Some)
    .map_err(|e| anyhow!("{e}"))
}

/// Is an apply running a canary of `block` now?
async fn canary_running(ws: &Workspace, block: &str) -> bool {
    block_action(ws, block, "canary")
        .await
        .ok()
        .flatten()
        .is_some_and(|o| o.output.get("running") == Some(&serde_json::Value::Bool(true)))
}

/// Tell the apply running a canary of `block` to `promote` or `abort` it, and wait until it
/// has. Returns the step it was at and how the canary ended (it may have been aborted by its
/// judge in the same look).
async fn signal_canary(ws: &Workspace, block: &str, what: &str) -> Result<(u64, String)> {
    let out = block_action(ws, block, what).await?.ok_or_else(|| {
        anyhow!("no canary of {block} is running\n  = help: a canary runs during `pipeline apply` of a service with update = {{ strategy = \"canary\" }}")
    })?;
    Ok((
        out.output.get("step").and_then(|s| s.as_u64()).unwrap_or(0),
        out.output
            .get("ended")
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_string(),
    ))
}
