//! Provider settings several providers share.

use pipeline_engine::provider::Invalid;
use pipeline_engine::value::ValueMap;
use std::path::PathBuf;

/// The `binary` setting of a provider block: an absolute path to an executable file, or None
/// when the block does not set it. `program` names the executable in messages ("nginx"), and
/// `example` is a path to show in the help ("/usr/sbin/nginx").
pub fn executable(
    config: &ValueMap,
    program: &str,
    example: &str,
) -> Result<Option<PathBuf>, Invalid> {
    use std::os::unix::fs::PermissionsExt;
    let Some(s) = config
        .get("binary")
        .map(|v| v.unmarked().0)
        .and_then(|v| v.as_str().map(str::to_string))
    else {
        return Ok(None);
    };
    let p = PathBuf::from(&s);
    let problem = if !p.is_absolute() {
        Some("is not an absolute path")
    } else {
        match std::fs::metadata(&p) {
            Err(_) => Some("does not exist"),
            Ok(m) if !m.is_file() => Some("is not a file"),
            Ok(m) if m.permissions().mode() & 0o111 == 0 => Some("is not executable"),
            Ok(_) => None,
        }
    };
    match problem {
        Some(why) => Err(Invalid::new(
            Some("binary"),
            format!("the {program} executable {s} {why}"),
            format!("give the absolute path of the {program} executable (e.g. binary = \"{example}\"), or remove `binary` to use the {program} on PATH"),
        )),
        None => Ok(Some(p)),
    }
}
