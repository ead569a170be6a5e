//! `pipeline completions SHELL` and `pipeline man`: generated from the one definition of the
//! commands and flags (`Cli` in src/commands.rs), so they cannot drift from what the binary
//! accepts.

use anyhow::{Context, Result};
use clap::Command;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// `cmd` without its hidden subcommands (`__hook`, run by the git hook): clap_complete's
/// scripts would offer them.
fn visible(cmd: Command) -> Command {
    let mut c = Command::new("pipeline")
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    c = c.version(env!("CARGO_PKG_VERSION"));
    if let Some(a) = cmd.get_about() {
        c = c.about(a.clone());
    }
    c
}

/// The completion script for `shell` on standard output: `source <(pipeline completions bash)`.
pub fn completions(cmd: Command, shell: clap_complete::Shell) -> Result<ExitCode> {
    let mut cmd = visible(cmd);
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "pipeline", &mut out);
    std::io::stdout().write_all(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// The man page: `pipeline.1` on standard output, or with `dir`, it and one page per command
/// (`pipeline-plan.1`, ...) written there.
pub fn man(cmd: Command, dir: Option<&Path>) -> Result<ExitCode> {
    let Some(dir) = dir else {
        let mut out = Vec::new();
        clap_mangen::Man::new(visible(cmd)).render(&mut out)?;
        std::io::stdout().write_all(&out)?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    let mut page = |name: String, c: Command| -> Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(c)
            .title(name.to_uppercase())
            .render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    let subs: Vec<Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    page("pipeline".into(), visible(cmd))?;
    for s in subs {
        let name = format!("pipeline-{}", s.get_name());
        let bin = format!("pipeline {}", s.get_name());
        page(name.clone(), s.display_name(name).bin_name(bin))?;
    }
    for p in &written {
        println!("{}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
