//! `promote`, `rollback`: act on a service's running canary or its last blue-green switch.

use crate::commands::{service_block, stale_note};
use crate::ops::{self, Workspace};
use anyhow::{bail, Result};
use std::process::ExitCode;

pub async fn promote(ws: &Workspace, service: &str) -> Result<ExitCode> {
    let block = service_block(service);
    let (step, ended) = ops::signal_canary(ws, &block, "promote").await?;
    if ended != "promoted" {
        bail!("{block}: the canary at {step}% ended before the promotion: {ended}");
    }
    println!("{block}: the canary at {step}% was promoted; the apply running it switches every instance to the candidate.");
    Ok(ExitCode::SUCCESS)
}

pub async fn rollback(ws: &Workspace, service: &str) -> Result<ExitCode> {
    let block = service_block(service);
    if ops::canary_running(ws, &block).await {
        let (step, ended) = ops::signal_canary(ws, &block, "abort").await?;
        if ended == "promoted" {
            bail!("{block}: the canary at {step}% was promoted before it could be stopped; roll back with a deploy of the previous version");
        }
        println!("{block}: the canary was stopped at {step}% ({ended}); the candidate gets no traffic and the previous version keeps serving.");
        return Ok(ExitCode::SUCCESS);
    }
    let _lock = ops::lock(ws, "rollback", &mut stale_note)?;
    let start = std::time::Instant::now();
    let n = ops::rollback(ws, &block).await?;
    println!(
        "{block}: {n} instance(s) switched back to their previous generation in {:.0} ms.",
        start.elapsed().as_secs_f64() * 1000.0
    );
    println!("The stack still names the newer version: `pipeline plan` shows the difference.");
    Ok(ExitCode::SUCCESS)
}
