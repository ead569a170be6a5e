//! `canary BASE CANDIDATE` (and `canary --simulate`): the options, one operation of
//! `pipeline_ops::canary`, and the report rendered as text, JSON and an HTML file.

use crate::commands::VarArgs;
use crate::render;
use anyhow::{bail, Context, Result};
use clap::Args;
use pipeline_analysis::judge::Outcome;
use pipeline_ops::canary::{self, CanaryRequest};
use pipeline_ops::{LocalStacks, Workspace};
use pipeline_supervise::private;
use std::path::PathBuf;
use std::process::ExitCode;

// The command line of `canary` (its help text is the variant's, in commands.rs).
#[derive(Args)]
pub struct CanaryFlags {
    /// The baseline revision (branch, tag or commit).
    #[arg(required_unless_present = "simulate")]
    pub baseline: Option<String>,
    /// The candidate revision.
    #[arg(required_unless_present = "simulate")]
    pub candidate: Option<String>,
    /// The stack that declares the service (default: as for plan).
    #[arg(long)]
    pub stack: Option<PathBuf>,
    /// The service, when the stack has several.
    #[arg(long)]
    pub service: Option<String>,
    /// Replicas per arm.
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// How long to send load, e.g. 30s (default: the service's `canary.duration`, else 30s).
    #[arg(long)]
    pub duration: Option<String>,
    /// Requests per second through the balancer (default: `canary.rate`, else 100).
    #[arg(long)]
    pub rate: Option<u32>,
    /// The request's method (default: `canary.request.method`, else GET).
    #[arg(long)]
    pub method: Option<String>,
    /// The request's path (default: `canary.request.path`, else /).
    #[arg(long)]
    pub path: Option<String>,
    /// A file whose content is sent as the request body (default: `canary.request.body`).
    #[arg(long)]
    pub body_file: Option<PathBuf>,
    /// The body's Content-Type (default: `canary.request.content_type`).
    #[arg(long)]
    pub content_type: Option<String>,
    /// Relative latency increase tolerated, e.g. 0.25 (default: `canary.latency_tolerance`).
    #[arg(long)]
    pub latency_tolerance: Option<f64>,
    /// 1 - significance, e.g. 0.98 (default: `canary.confidence`).
    #[arg(long)]
    pub confidence: Option<f64>,
    /// Where to write the HTML report with charts.
    #[arg(long, default_value = ".pipeline/canary-report.html")]
    pub report: PathBuf,
    /// The verdict, its evidence and the time series as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// No revisions: simulate A/A, 0.5%->5% errors and +25% latency at 100 req/s per arm
    /// and print how often the sequential judge fails or detects, and how fast.
    #[arg(long, conflicts_with_all = ["baseline", "candidate"])]
    pub simulate: bool,
    /// Simulated runs per scenario.
    #[arg(long, default_value_t = 200, requires = "simulate")]
    pub runs: usize,
    #[command(flatten)]
    pub vars: VarArgs,
}

pub async fn run(ws: &Workspace, f: CanaryFlags) -> Result<ExitCode> {
    let variables = pipeline_ops::variables(&f.vars.vars, &f.vars.var_files)?;
    if f.simulate {
        let sim = canary::simulate(f.runs)?;
        if f.json {
            println!(
                "{}",
                serde_json::json!({ "seed": sim.seed, "scenarios": sim.scenarios, "results": sim.results })
            );
        } else {
            print!("{}", render::simulation_text(&sim));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(baseline), Some(candidate)) = (f.baseline, f.candidate) else {
        bail!("name the baseline and the candidate revision, e.g. `pipeline canary main my-branch`\n  = help: `pipeline canary --simulate` needs none");
    };
    let req = CanaryRequest {
        work_dir: ws.dir.clone(),
        stack: ws.stack(f.stack.as_deref())?,
        baseline,
        candidate,
        service: f.service,
        replicas: f.replicas,
        duration: f.duration,
        rate: f.rate,
        method: f.method,
        path: f.path,
        body_file: f.body_file,
        content_type: f.content_type,
        latency_tolerance: f.latency_tolerance,
        confidence: f.confidence,
        variables,
    };
    let outcome = canary::run(&LocalStacks, &req, &mut |p| {
        eprintln!("{}", render::canary_progress(&p))
    })
    .await?;
    let rep = &outcome.report;
    let file = std::env::current_dir()?.join(&f.report);
    if let Some(parent) = file.parent() {
        private::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    private::write(&file, canary::report::render_html(rep))
        .with_context(|| format!("cannot write the report {}", file.display()))?;
    if f.json {
        let mut v = serde_json::to_value(rep)?;
        v["client"] = outcome.client.to_string().into();
        v["report_file"] = file.display().to_string().into();
        println!("{v}");
        eprintln!("canary: report written to {}", file.display());
    } else {
        print!("{}", canary::report::render_text(rep));
        println!("Report: {}", file.display());
    }
    if let Some(e) = outcome.teardown_error {
        return Err(e);
    }
    Ok(match rep.verdict.outcome {
        Outcome::Pass => ExitCode::SUCCESS,
        Outcome::Fail => ExitCode::from(1),
        Outcome::Marginal | Outcome::Inconclusive => ExitCode::from(3),
    })
}
