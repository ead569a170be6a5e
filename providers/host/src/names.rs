//! Names on disk.

use std::path::{Path, PathBuf};

/// An instance address as one file name: `service.web[0]` → `service.web_0_`.
pub fn sanitize(addr: &str) -> String {
    addr.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `.pipeline/run/<instance>/`: where a provider keeps what it runs for an instance.
pub fn run_dir(work_dir: &Path, addr: &str) -> PathBuf {
    work_dir.join("run").join(sanitize(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_one_file_name() {
        assert_eq!(sanitize("service.web[0]"), "service.web_0_");
        assert_eq!(sanitize("service.w[\"a/b\"]"), "service.w__a_b__");
        assert_eq!(
            run_dir(Path::new("/w/.pipeline"), "balancer.front"),
            Path::new("/w/.pipeline/run/balancer.front")
        );
    }
}
