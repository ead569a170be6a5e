//! `promote`, `rollback`: act on a service's running canary or its last blue-green switch.

use anyhow::Result;
use pipeline_ops::rollout::{self, replica_block, Rollback};
use pipeline_ops::Workspace;
use std::process::ExitCode;

pub async fn promote(ws: &Workspace, service: &str) -> Result<ExitCode> {
    let block = replica_block(ws, service, None)?;
    let step = rollout::promote(ws, &block).await?;
    println!("{block}: the canary at {step}% was promoted; the apply running it switches every instance to the candidate.");
    Ok(ExitCode::SUCCESS)
}

pub async fn rollback(ws: &Workspace, service: &str) -> Result<ExitCode> {
    let block = replica_block(ws, service, None)?;
    match rollout::rollback(ws, &block, &mut super::apply::stale_note).await? {
        Rollback::CanaryStopped { step, ended } => {
            println!("{block}: the canary was stopped at {step}% ({ended}); the candidate gets no traffic and the previous version keeps serving.");
        }
        Rollback::Switched { instances, elapsed } => {
            println!(
                "{block}: {instances} instance(s) switched back to their previous generation in {:.0} ms.",
                elapsed.as_secs_f64() * 1000.0
            );
            println!(
                "The stack still names the newer version: `pipeline plan` shows the difference."
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
