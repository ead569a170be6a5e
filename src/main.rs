//! `pipeline`: flags in, rendering out. Every command is a thin wrapper over `ops`.
//! Exit codes: 0 success (no changes with -detailed-exitcode), 1 error, 2 changes present
//! (-detailed-exitcode only).

mod commands;
mod render;

// The canary's operation and report model live in the library (pipeline-ops); apply renders
// progressive canaries' reports through it.
use pipeline_ops::canary;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Lossy: a git hook passes ref names, which may hold any bytes (they are only compared).
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // The replica supervisor must run on the main thread before any runtime exists.
    if args.get(1).map(String::as_str) == Some("__supervise") {
        let Some(dir) = args.get(2) else {
            eprintln!("usage: pipeline __supervise DIR");
            return ExitCode::from(2);
        };
        return ExitCode::from(
            pipeline_supervise::run_supervisor(std::path::Path::new(dir)).clamp(0, 255) as u8,
        );
    }
    if args.get(1).map(String::as_str) == Some("__slot") {
        let Some(dir) = args.get(2) else {
            eprintln!("usage: pipeline __slot DIR");
            return ExitCode::from(2);
        };
        return ExitCode::from(
            pipeline_providers::local::slot::run(std::path::Path::new(dir)).clamp(0, 255) as u8,
        );
    }
    if args.get(1).map(String::as_str) == Some("__monitor") {
        let Some(dir) = args.get(2) else {
            eprintln!("usage: pipeline __monitor DIR");
            return ExitCode::from(2);
        };
        return ExitCode::from(
            pipeline_providers::monitor::run_daemon(
                std::path::Path::new(dir),
                pipeline_providers::registry(),
            )
            .clamp(0, 255) as u8,
        );
    }
    // Like any Unix filter: `pipeline state show X | head` ends quietly when the pipe closes.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args = commands::normalize_flags(args);
    commands::run(args)
}
