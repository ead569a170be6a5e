//! `plan`, `validate`, `graph`.

use crate::commands::{plan_inputs, PlanArgs, VarArgs};
use crate::render::{self, Style};
use anyhow::Result;
use pipeline_ops::plan::{check_plan_out, make_plan, save_plan};
use pipeline_ops::Workspace;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

pub async fn plan(
    ws: &Workspace,
    style: Style,
    args: PlanArgs,
    out: Option<PathBuf>,
    json: bool,
    detailed_exitcode: bool,
    destroy: bool,
) -> Result<ExitCode> {
    if let Some(path) = &out {
        check_plan_out(path)?;
    }
    let mut inputs = plan_inputs(ws, &args, destroy)?;
    // A dry run of changes is no part of a refresh-only plan.
    inputs.preview = !inputs.refresh_only;
    let (plan, _) = make_plan(ws, &inputs).await?;
    ws.remember_stack(&inputs.stack);
    if json {
        let mut so = std::io::stdout().lock();
        for l in render::plan_json_lines(&plan) {
            writeln!(so, "{l}")?;
        }
    } else {
        print!("{}", render::plan_text(&plan, style));
    }
    if let Some(path) = out {
        save_plan(&plan, &path)?;
        if !json {
            println!(
                "\nSaved the plan to {}. Apply exactly this plan with `pipeline apply {}`.",
                path.display(),
                path.display()
            );
        }
    }
    Ok(if detailed_exitcode && plan.has_changes() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn validate(ws: &Workspace, style: Style, stack: Option<PathBuf>) -> Result<ExitCode> {
    let stack = ws.stack(stack.as_deref())?;
    let (config, graph) = ws.load(&stack)?;
    let n: usize = config.modules.iter().map(|m| m.resources.len()).sum();
    println!(
        "{} {} ({} files, {} modules, {} resource blocks, {} graph nodes)",
        style.green("The stack is valid:"),
        stack.display(),
        config.files.len(),
        config.modules.len(),
        n,
        graph.graph.node_count()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn graph(ws: &Workspace, stack: Option<PathBuf>, vars: VarArgs) -> Result<ExitCode> {
    let inputs = plan_inputs(
        ws,
        &PlanArgs {
            stack,
            vars,
            inventory: None,
            refresh: false,
            refresh_only: false,
            targets: vec![],
            replace: vec![],
            parallelism: 10,
            interrupt_grace: pipeline_ops::apply::CTRL_C_GRACE,
        },
        false,
    )?;
    let (plan, _) = make_plan(ws, &inputs).await?;
    print!("{}", render::plan_dot(&plan));
    Ok(ExitCode::SUCCESS)
}
