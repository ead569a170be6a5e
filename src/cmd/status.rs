//! `status`, `logs`: what runs for each recorded instance, and its log.

use crate::render::Style;
use anyhow::Result;
use pipeline_ops::status::{self, Log, StatusRow};
use pipeline_ops::Workspace;
use serde_json::json;
use std::process::ExitCode;

pub async fn status(ws: &Workspace, json: bool, style: Style) -> Result<ExitCode> {
    let st = status::status(ws).await?;
    if json {
        let rows: Vec<serde_json::Value> = st.rows.iter().map(row_json).collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    if st.rows.is_empty() {
        println!("No processes are recorded here.");
        return Ok(ExitCode::SUCCESS);
    }
    // A HOST column when something runs on another machine.
    let hosts = st.rows.iter().any(|r| r.host.is_some());
    let host_col = |h: &str| {
        if hosts {
            format!("{h:<12} ")
        } else {
            String::new()
        }
    };
    println!(
        "{:<32} {}{:>8} {:>6} {:<10} {:>9} {:>8}",
        "INSTANCE",
        host_col("HOST"),
        "PID",
        "PORT",
        "HEALTH",
        "UPTIME",
        "RESTARTS"
    );
    for r in &st.rows {
        let address = if r.canary {
            let g = r.generation.map_or("null".into(), |g| g.to_string());
            format!("{} canary g{g}", r.address)
        } else {
            r.address.clone()
        };
        let host = pipeline_engine::diag::escape_control(r.host.as_deref().unwrap_or("-"));
        let health = match r.health.as_str() {
            "healthy" => style.green("healthy"),
            h @ ("starting" | "unknown") => h.to_string(),
            h => style.red(h),
        };
        // Pad before colouring so escape codes do not skew the columns.
        let pad = 10usize.saturating_sub(r.health.chars().count());
        println!(
            "{:<32} {}{:>8} {:>6} {}{} {:>8} {:>8}",
            address,
            host_col(&host),
            r.pid.map_or("-".into(), |p| p.to_string()),
            r.port
                .as_ref()
                .and_then(|p| p.as_u64())
                .map_or("-".into(), |p| p.to_string()),
            health,
            " ".repeat(pad),
            format!("{}s", r.uptime_s),
            r.restarts
        );
    }
    for n in st.notes {
        println!("{n}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A row as `status -json` has it (a candidate's row has fewer fields).
fn row_json(r: &StatusRow) -> serde_json::Value {
    if r.canary {
        return json!({"address": r.address, "kind": r.kind, "canary": true, "host": r.host, "generation": r.generation,
            "pid": r.pid, "port": r.port, "running": r.running, "healthy": r.healthy,
            "health": r.health, "uptime_s": r.uptime_s, "restarts": r.restarts});
    }
    json!({"address": r.address, "kind": r.kind, "host": r.host, "pid": r.pid, "port": r.port, "url": r.url,
        "generation": r.generation, "standby_generation": r.standby_generation, "build_id": r.build_id,
        "running": r.running, "healthy": r.healthy, "health": r.health, "health_reason": r.health_reason,
        "uptime_s": r.uptime_s, "restarts": r.restarts, "log_dropped_bytes": r.log_dropped_bytes})
}

pub async fn logs(ws: &Workspace, addr: &str, lines: usize, follow: bool) -> Result<ExitCode> {
    match status::log_of(ws, addr).await? {
        Log::File(path) => {
            status::tail(&path, lines, follow, &mut |l| {
                use std::io::Write;
                writeln!(std::io::stdout(), "{l}")
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Log::Command(argv) => {
            let status = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .status()?;
            Ok(if status.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
