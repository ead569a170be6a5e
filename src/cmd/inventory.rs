//! `inventory`: an Ansible inventory of the recorded hosts.

use anyhow::{Context, Result};
use pipeline_ops::Workspace;
use std::path::PathBuf;
use std::process::ExitCode;

pub async fn inventory(ws: &Workspace, out: Option<PathBuf>) -> Result<ExitCode> {
    let written = pipeline_ops::inventory::inventory(ws).await?;
    match out {
        None => print!("{}", written.text),
        Some(path) => {
            std::fs::write(&path, &written.text)
                .with_context(|| format!("cannot write the inventory to {}", path.display()))?;
            eprintln!(
                "Wrote {}: {} hosts in {} groups ({}).",
                path.display(),
                written.hosts.len(),
                written.groups.len(),
                written.groups.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
