//! Files and environments that may hold secrets.
//!
//! Everything pipeline writes under its working directory (`.pipeline/`) goes through the file
//! helpers here: directories are created `0700` and files `0600`, whatever the umask, so a
//! rendered config with a password, a replica's environment or a canary report is readable by
//! the owner only. A file that already exists with wider permissions is narrowed when written.
//!
//! Every process pipeline starts (supervisors, the apps, nginx, redis, slots, the monitor) gets
//! a cleared environment plus [`ALLOWED_ENV`] from the starting process, plus what its spec
//! gives it: never the CLI's whole environment (where `PIPELINE_VAR_*` secrets live).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// Mode of every file pipeline writes under its working directory.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory pipeline creates under its working directory.
pub const DIR_MODE: u32 = 0o700;

/// The only variables of the starting process that a started process inherits: where programs
/// are, who and where the user is, the locale and time zone, and where temporary files go
/// (port and namespace claims live under `$TMPDIR`). Anything else an app needs is given in
/// the stack (`env`).
pub const ALLOWED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "TMPDIR",
];

/// Clear `cmd`'s environment and give it back only [`ALLOWED_ENV`] from this process.
/// Call before adding the variables the process is meant to have.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    cmd.env_clear();
    for k in ALLOWED_ENV {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    cmd
}

/// `mkdir -p` with every directory it creates `0700`; the last one is narrowed to `0700` if it
/// already existed wider.
///
/// A clean-up may remove an empty parent (the run or builds directory after the last instance
/// went) between the creation of one level and the next: then it is made again, a few times.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    let mut attempts = 0;
    loop {
        match fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
        {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 5 => attempts += 1,
            r => {
                r?;
                break;
            }
        }
    }
    narrow(dir, DIR_MODE)
}

/// Set `path`'s permission bits to `mode` when they allow more.
pub fn narrow(path: &Path, mode: u32) -> std::io::Result<()> {
    let meta = fs::metadata(path)?;
    if meta.permissions().mode() & 0o777 & !mode != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Open `path` for writing (created `0600`, truncated; an existing file is narrowed to `0600`).
pub fn create(path: &Path) -> std::io::Result<fs::File> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    narrow(path, FILE_MODE)?;
    Ok(f)
}

/// Open `path` for appending (created `0600`; an existing file is narrowed to `0600`).
pub fn append(path: &Path) -> std::io::Result<fs::File> {
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)?;
    narrow(path, FILE_MODE)?;
    Ok(f)
}

/// Write `contents` to `path` (`0600`), like `fs::write`.
pub fn write(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    create(path)?.write_all(contents.as_ref())
}

/// Write `contents` to `path` atomically (a `0600` temporary file beside it, then rename).
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    crate::util::write_atomic(path, contents.as_ref(), FILE_MODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_files_and_dirs_are_owner_only_whatever_existed() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&t.path().join(d)), 0o700, "{d}");
        }
        let f = deep.join("x.conf");
        fs::write(&f, "old").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        write(&f, "new").unwrap();
        assert_eq!(mode(&f), 0o600);
        assert_eq!(fs::read_to_string(&f).unwrap(), "new");
        let g = deep.join("y.json");
        write_atomic(&g, "{}").unwrap();
        assert_eq!(mode(&g), 0o600);
        let l = deep.join("z.log");
        append(&l).unwrap().write_all(b"1\n").unwrap();
        append(&l).unwrap().write_all(b"2\n").unwrap();
        assert_eq!(mode(&l), 0o600);
        assert_eq!(fs::read_to_string(&l).unwrap(), "1\n2\n");
        let wide = t.path().join("wide");
        fs::create_dir(&wide).unwrap();
        fs::set_permissions(&wide, fs::Permissions::from_mode(0o755)).unwrap();
        create_dir_all(&wide).unwrap();
        assert_eq!(mode(&wide), 0o700);
    }

    #[test]
    fn a_started_process_gets_only_the_allowed_environment() {
        std::env::set_var("PIPELINE_VAR_private_rs_test", "hunter2");
        let mut cmd = Command::new("env");
        clean_env(&mut cmd).env("GIVEN", "1");
        let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.lines().any(|l| l == "GIVEN=1"), "{out}");
        for l in out.lines() {
            let k = l.split('=').next().unwrap();
            assert!(k == "GIVEN" || ALLOWED_ENV.contains(&k), "{k} leaked");
        }
    }
}
