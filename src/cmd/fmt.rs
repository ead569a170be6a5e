//! `fmt`: rewrite stack files in the canonical layout (engine/src/lang/fmt.rs), like
//! `terraform fmt`. Exit 0 done (or nothing to change), 1 a file did not parse or could not be
//! read or written, 3 `-check` found files that would change.

use anyhow::{Context, Result};
use clap::Args;
use pipeline_engine::diag::escape_control;
use pipeline_engine::lang::fmt::format_source;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub struct FmtFlags {
    /// Files or directories (the .hcl files in them); `-` reads standard input and writes the
    /// formatted text to standard output. Default: the current directory.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Change nothing: list the files that would change and exit 3 if there are any.
    #[arg(long)]
    check: bool,
    /// Print a unified diff of each change.
    #[arg(long)]
    diff: bool,
    /// Descend into subdirectories (those whose name starts with `.` are skipped).
    #[arg(long)]
    recursive: bool,
    /// List the files that changed (or would change, with -check).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    list: bool,
}

pub fn fmt(f: FmtFlags) -> ExitCode {
    let paths = if f.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        f.paths.clone()
    };
    let mut failed = false;
    let mut changed = false;
    for p in &paths {
        if p.as_os_str() == "-" {
            match stdin(&f) {
                Ok(c) => changed |= c,
                Err(e) => {
                    failed = true;
                    eprintln!("error: {}", escape_control(&format!("{e:#}")));
                }
            }
            continue;
        }
        let files = match collect(p, f.recursive) {
            Ok(files) => files,
            Err(e) => {
                failed = true;
                eprintln!("error: {}", escape_control(&format!("{e:#}")));
                continue;
            }
        };
        for file in files {
            match one(&file, &f) {
                Ok(c) => changed |= c,
                Err(Failure::Syntax(d)) => {
                    failed = true;
                    eprint!("{d}");
                }
                Err(Failure::Io(e)) => {
                    failed = true;
                    eprintln!("error: {}", escape_control(&format!("{e:#}")));
                }
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else if f.check && changed {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

enum Failure {
    Syntax(Box<pipeline_engine::diag::Diagnostic>),
    Io(anyhow::Error),
}

/// The files a PATH names: itself, or the `.hcl` files of a directory (sorted).
fn collect(p: &Path, recursive: bool) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
    if !meta.is_dir() {
        return Ok(vec![p.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(p)
        .with_context(|| format!("cannot list {}", p.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot list {}", p.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let ft = e.file_type()?;
        if ft.is_dir() {
            if recursive && !e.file_name().to_string_lossy().starts_with('.') {
                out.extend(collect(&path, true)?);
            }
        } else if path.extension().is_some_and(|x| x == "hcl") {
            out.push(path);
        }
    }
    Ok(out)
}

/// Format one file; true when it changed (or would, with -check).
fn one(path: &Path, f: &FmtFlags) -> Result<bool, Failure> {
    let text = std::fs::read_to_string(path)
        .with_context(|| {
            format!(
                "cannot read {} (stack files are UTF-8 text)",
                path.display()
            )
        })
        .map_err(Failure::Io)?;
    let formatted = format_source(path, &text).map_err(|d| Failure::Syntax(Box::new(d)))?;
    if formatted == text {
        return Ok(false);
    }
    if f.list {
        println!("{}", escape_control(&path.display().to_string()));
    }
    if f.diff {
        print_diff(&path.display().to_string(), &text, &formatted);
    }
    if !f.check {
        write_atomic(path, &formatted).map_err(Failure::Io)?;
    }
    Ok(true)
}

fn stdin(f: &FmtFlags) -> Result<bool> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read standard input")?;
    let formatted =
        format_source(Path::new("<stdin>"), &text).map_err(|d| anyhow::anyhow!(Reported(d)))?;
    let changed = formatted != text;
    if f.diff {
        print_diff("<stdin>", &text, &formatted);
    } else if !f.check {
        std::io::stdout().write_all(formatted.as_bytes())?;
    }
    Ok(changed)
}

/// A diagnostic already rendered in full.
#[derive(Debug)]
struct Reported(pipeline_engine::diag::Diagnostic);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0.to_string();
        write!(f, "{}", s.strip_prefix("error: ").unwrap_or(&s).trim_end())
    }
}

impl std::error::Error for Reported {}

fn print_diff(name: &str, old: &str, new: &str) {
    let diff = similar::TextDiff::from_lines(old, new);
    let text = diff
        .unified_diff()
        .header(&format!("{name} (before)"), &format!("{name} (formatted)"))
        .to_string();
    print!("{}", escape_control(&text));
}

/// Replace the file through a temporary file beside it and a rename: a reader sees the old text
/// or the new, never half; the file keeps its mode.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.fmt-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("cannot write {}: {e}", path.display())
    })
}
