//! Why the canary's arms did not come up, as data: [`ArmFailure`] says what failed (the build,
//! an exit before health, a health check that never passed, anything else) with the facts
//! that go with it, and [`ArmsFailed`] renders the advice from those variants. The canary's
//! directory (build logs, replica logs) is removed afterwards, so the output is carried here
//! rather than pointed to.
//!
//! Where the facts come from: the apply report carries each failure as the provider's message
//! only (engine `ApplyReport::failed`), so [`ArmFailure::from_message`] is the one place that
//! reads the local service provider's wording (its build and supervisor errors). It goes once
//! the provider's error carries its cause as data; nothing else here looks at message text.

use std::fmt;

/// What failed in one arm.
#[derive(Clone, Debug, PartialEq)]
pub enum ArmFailure {
    /// The build command exited unsuccessfully.
    Build {
        command: String,
        /// "exit status: 1".
        status: String,
        /// The build's last lines.
        output: Vec<String>,
    },
    /// The app exited before its health check passed.
    Exited {
        /// "exited with status 3".
        how: String,
        /// The app's last output (the supervisor's own lines left out).
        output: Vec<String>,
    },
    /// The app kept running but its health check did not pass within `start_timeout`.
    Unhealthy {
        /// "3s".
        after: String,
        output: Vec<String>,
    },
    /// Anything else, as the provider said it.
    Other { message: String },
}

impl ArmFailure {
    /// The failure the local service provider reported as `e` (see the module's note).
    pub fn from_message(e: &str) -> ArmFailure {
        let first = e.lines().next().unwrap_or("");
        let between = |s: &str, a: &str, b: &str| -> Option<String> {
            let i = s.find(a)? + a.len();
            let j = s[i..].find(b)? + i;
            Some(s[i..j].to_string())
        };
        // The app's own output, without the supervisor's lines.
        let app_output = || -> Vec<String> {
            e.lines()
                .skip_while(|l| !l.contains("last lines of"))
                .skip(1)
                .take_while(|l| l.starts_with("    "))
                .map(|l| &l[4..])
                .filter(|l| !l.contains("pipeline-supervise"))
                .map(String::from)
                .collect()
        };
        if first.contains("the build of") && first.contains(" failed") {
            return ArmFailure::Build {
                command: between(first, "`", "`").unwrap_or_else(|| "the build command".into()),
                status: between(first, "failed (", "):").unwrap_or_else(|| "failed".into()),
                output: e
                    .lines()
                    .skip_while(|l| !l.trim_start().starts_with("--- last lines of"))
                    .skip(1)
                    .take_while(|l| !l.trim_start().starts_with("= help:"))
                    .map(String::from)
                    .collect(),
            };
        }
        if first.contains(" before becoming healthy") {
            // "`CMD` exited with status 3 before becoming healthy" (the command may hold anything).
            return ArmFailure::Exited {
                how: first
                    .rfind('`')
                    .and_then(|i| between(&first[i..], "` ", " before becoming healthy"))
                    .unwrap_or_else(|| "exited".into()),
                output: app_output(),
            };
        }
        if let Some(after) = between(first, "not healthy after ", "; last lines") {
            return ArmFailure::Unhealthy {
                after,
                output: app_output(),
            };
        }
        ArmFailure::Other {
            message: e.to_string(),
        }
    }
}

/// One arm that did not come up.
#[derive(Clone, Debug, PartialEq)]
pub struct FailedArm {
    /// "baseline" or "candidate".
    pub arm: String,
    pub revision: String,
    /// The instance that failed, e.g. `service.candidate[0]`.
    pub addr: String,
    pub failure: ArmFailure,
}

/// The canary has no verdict because its arms (or its balancer) did not come up.
#[derive(Clone, Debug, PartialEq)]
pub struct ArmsFailed {
    /// The arms that failed, baseline first.
    pub arms: Vec<FailedArm>,
    /// When no arm failed: what else did (the balancer), as (address, message).
    pub others: Vec<(String, String)>,
}

impl ArmsFailed {
    /// From the apply's failures, `(address, message)`.
    pub fn new(baseline: &str, candidate: &str, failed: &[(String, String)]) -> ArmsFailed {
        let mut arms = Vec::new();
        for (arm, rev) in [("baseline", baseline), ("candidate", candidate)] {
            let Some((addr, e)) = failed
                .iter()
                .find(|(addr, _)| super::block_name(addr) == arm)
            else {
                continue;
            };
            arms.push(FailedArm {
                arm: arm.into(),
                revision: rev.into(),
                addr: addr.clone(),
                failure: ArmFailure::from_message(e),
            });
        }
        ArmsFailed {
            others: if arms.is_empty() {
                failed.to_vec()
            } else {
                Vec::new()
            },
            arms,
        }
    }
}

impl std::error::Error for ArmsFailed {}

/// Indented output lines.
fn quoted(lines: &[String]) -> String {
    if lines.iter().all(|l| l.trim().is_empty()) {
        return "  (it wrote nothing)".into();
    }
    lines
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl fmt::Display for FailedArm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let FailedArm {
            arm,
            revision: rev,
            addr,
            failure,
        } = self;
        match failure {
            ArmFailure::Build {
                command: cmd,
                status,
                output,
            } => write!(
                f,
                "the {arm} (revision `{rev}`) did not build, so there is no verdict:\n  `{cmd}` failed ({status}); the last lines it wrote:\n{}\n  = help: fix the build of `{rev}` (run `{cmd}` in a checkout of it to see the whole output), then run the canary again",
                quoted(output)
            ),
            ArmFailure::Exited { how, output } => write!(
                f,
                "the {arm} (revision `{rev}`) exited before it became healthy, so there is no verdict:\n  {addr} {how}; its last output:\n{}\n  = help: start revision `{rev}` by hand with the service's `run` command to see why it stops: it must keep running and listen on its {{{{port}}}}",
                quoted(output)
            ),
            ArmFailure::Unhealthy { after, output } => write!(
                f,
                "the {arm} (revision `{rev}`) did not become healthy, so there is no verdict:\n  {addr} was not healthy after {after}; its last output:\n{}\n  = help: revision `{rev}` must listen on its {{{{port}}}} and answer the service's `health` check within `start_timeout`; raise `start_timeout` if it starts slowly",
                quoted(output)
            ),
            ArmFailure::Other { message } => write!(
                f,
                "the {arm} (revision `{rev}`) did not come up, so there is no verdict:\n  {addr}: {message}\n  = help: paths under .pipeline/canary are gone: the canary removes its directory; run the canary again after fixing what the error says"
            ),
        }
    }
}

impl fmt::Display for ArmsFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.arms.is_empty() {
            // Only the balancer (or something else) failed.
            let why: Vec<String> = self
                .others
                .iter()
                .map(|(a, e)| format!("{a}: {e}"))
                .collect();
            return write!(
                f,
                "the canary's balancer did not come up, so there is no verdict:\n  {}\n  = help: the canary needs nginx (see `pipeline canary --help`); the error above says what failed",
                why.join("\n  ")
            );
        }
        let parts: Vec<String> = self.arms.iter().map(ToString::to_string).collect();
        write!(f, "{}", parts.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_gets_its_own_advice() {
        let build = "the build of service.candidate failed (exit status: 1): `sh build.sh`\n--- last lines of /x/build.log ---\nerror[E0425]: oops\n  = help: fix the build";
        let f = ArmsFailed::new(
            "main",
            "nobuild",
            &[("service.candidate[0]".into(), build.into())],
        );
        assert_eq!(
            f.arms[0].failure,
            ArmFailure::Build {
                command: "sh build.sh".into(),
                status: "exit status: 1".into(),
                output: vec!["error[E0425]: oops".into()],
            }
        );
        let shown = f.to_string();
        assert!(shown.starts_with("the candidate (revision `nobuild`) did not build"));
        assert!(shown.contains("  | error[E0425]: oops"), "{shown}");

        let unhealthy = "replica x (/d): not healthy after 3s (last check: refused); last lines of /d/replica.log:\n    listening soon";
        let f = ArmsFailed::new(
            "main",
            "deaf",
            &[("service.candidate[0]".into(), unhealthy.into())],
        );
        assert_eq!(
            f.arms[0].failure,
            ArmFailure::Unhealthy {
                after: "3s (last check: refused)".into(),
                output: vec!["listening soon".into()],
            }
        );
        // Only the balancer failed: no arm to blame.
        let f = ArmsFailed::new(
            "main",
            "b",
            &[("balancer.canary".into(), "nginx: not found".into())],
        );
        assert!(f.arms.is_empty());
        assert!(f
            .to_string()
            .starts_with("the canary's balancer did not come up"));
    }
}
