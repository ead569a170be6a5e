//! `apply`, `destroy`, `deploy`: plan under the state lock, then apply.

use crate::commands::{
    plan_inputs, read_saved_plan, report_orphans, run_apply, service_block, stale_note, PlanArgs,
};
use crate::ops::{self, Workspace};
use crate::render::Style;
use anyhow::{bail, Result};
use std::process::ExitCode;

pub async fn apply(
    ws: &Workspace,
    style: Style,
    args: PlanArgs,
    auto_approve: bool,
    json: bool,
) -> Result<ExitCode> {
    // `apply FILE` with a saved plan applies exactly that plan.
    if let Some(p) = &args.stack {
        if let Some(plan) = read_saved_plan(ws, p)? {
            let lock = ops::lock(ws, "apply", &mut stale_note)?;
            report_orphans(&ops::sweep_orphans(ws, &lock).await?, json);
            return run_apply(
                ws,
                plan,
                &lock,
                true,
                json,
                (args.parallelism, args.interrupt_grace),
                style,
                false,
            )
            .await;
        }
    }
    // Held from planning to the last step: nobody changes the state in between.
    let inputs = plan_inputs(ws, &args, false)?;
    let lock = ops::lock(ws, "apply", &mut stale_note)?;
    report_orphans(&ops::sweep_orphans(ws, &lock).await?, json);
    let (plan, _) = ops::make_plan(ws, &inputs).await?;
    ws.remember_stack(&inputs.stack);
    run_apply(
        ws,
        plan,
        &lock,
        auto_approve,
        json,
        (args.parallelism, args.interrupt_grace),
        style,
        true,
    )
    .await
}

pub async fn destroy(
    ws: &Workspace,
    style: Style,
    args: PlanArgs,
    auto_approve: bool,
    json: bool,
) -> Result<ExitCode> {
    let inputs = plan_inputs(ws, &args, true)?;
    let lock = ops::lock(ws, "destroy", &mut stale_note)?;
    report_orphans(&ops::sweep_orphans(ws, &lock).await?, json);
    let (plan, _) = ops::make_plan(ws, &inputs).await?;
    run_apply(
        ws,
        plan,
        &lock,
        auto_approve,
        json,
        (args.parallelism, args.interrupt_grace),
        style,
        true,
    )
    .await
}

/// What `deploy` was asked for beyond the plan's own options.
pub struct DeployFlags {
    pub service: String,
    pub version: String,
    pub auto_approve: bool,
    pub json: bool,
}

pub async fn deploy(
    ws: &Workspace,
    style: Style,
    mut args: PlanArgs,
    f: DeployFlags,
) -> Result<ExitCode> {
    let DeployFlags {
        service,
        version,
        auto_approve,
        json,
    } = f;
    let block = service_block(&service);
    args.targets.push(block.clone());
    let mut inputs = plan_inputs(ws, &args, false)?;
    inputs.opts.overrides.push((
        block.clone(),
        "revision".into(),
        pipeline_engine::value::Value::String(version.clone()),
    ));
    let lock = ops::lock(ws, "deploy", &mut stale_note)?;
    report_orphans(&ops::sweep_orphans(ws, &lock).await?, json);
    let (plan, config) = ops::make_plan(ws, &inputs).await?;
    if !config.modules[0].resources.contains_key(&block) {
        bail!(
            "the stack has no {block}\n  = help: services here: {}",
            config.modules[0]
                .resources
                .keys()
                .filter(|k| k.starts_with("service."))
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let code = run_apply(
        ws,
        plan,
        &lock,
        auto_approve,
        json,
        (args.parallelism, args.interrupt_grace),
        style,
        true,
    )
    .await?;
    if !json {
        eprintln!("note: {block} now runs {version}; the stack still names its own revision, so pin {version:?} there or the next apply goes back");
    }
    Ok(code)
}
