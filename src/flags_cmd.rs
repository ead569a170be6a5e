//! `pipeline flags`: read and flip feature flags in a `flags` store (being built).

use crate::ops::Workspace;
use crate::render::Style;
use anyhow::{bail, Result};
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum FlagsCmd {
    /// Every flag and its value.
    List,
}

pub async fn run(_ws: &Workspace, _cmd: FlagsCmd, _style: Style) -> Result<ExitCode> {
    bail!("flags are not implemented yet")
}
