//! Why the canary's arms did not come up, as data: [`ArmFailure`] says what failed (the build,
//! an exit before health, a health check that never passed, anything else) with the facts
//! that go with it, and [`ArmsFailed`] renders the advice from those variants. The canary's
//! directory (build logs, replica logs) is removed afterwards, so the output is carried here
//! rather than pointed to.
//!
//! Where the facts come from: the apply report carries each failure as the provider's error
//! (engine `ApplyReport::failed`), whose `cause` says what failed as data
//! ([`pipeline_engine::provider::Cause`]); [`ArmFailure::from_error`] maps it. Nothing here
//! reads message text.

use pipeline_engine::apply::Failure;
use pipeline_engine::provider::{Cause, ProviderError};
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
        /// What the last check saw: "connection refused".
        last_check: String,
        output: Vec<String>,
    },
    /// Anything else, as the provider said it.
    Other { message: String },
}

impl ArmFailure {
    /// What the provider's error says failed: its cause when it has one, else its words.
    pub fn from_error(e: &ProviderError) -> ArmFailure {
        match e.cause.as_deref() {
            Some(Cause::Build {
                command,
                status,
                output,
            }) => ArmFailure::Build {
                command: command.clone(),
                status: status.clone(),
                output: output.clone(),
            },
            Some(Cause::ExitedBeforeHealthy { how, output }) => ArmFailure::Exited {
                how: how.clone(),
                output: output.clone(),
            },
            Some(Cause::NeverHealthy {
                after,
                last_check,
                output,
            }) => ArmFailure::Unhealthy {
                after: after.clone(),
                last_check: last_check.clone(),
                output: output.clone(),
            },
            Some(Cause::Deadline) | None => ArmFailure::Other {
                message: e.to_string(),
            },
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
    /// From the apply's failures. The arms are the canary stack's own blocks
    /// (`service.baseline`, `service.candidate`), found by address.
    pub fn new(baseline: &str, candidate: &str, failed: &[Failure]) -> ArmsFailed {
        let mut arms = Vec::new();
        for (arm, rev) in [("baseline", baseline), ("candidate", candidate)] {
            let Some(f) = failed.iter().find(|f| super::block_name(&f.addr) == arm) else {
                continue;
            };
            arms.push(FailedArm {
                arm: arm.into(),
                revision: rev.into(),
                addr: f.addr.clone(),
                failure: ArmFailure::from_error(&f.error),
            });
        }
        ArmsFailed {
            others: if arms.is_empty() {
                failed
                    .iter()
                    .map(|f| (f.addr.clone(), f.error.to_string()))
                    .collect()
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
            ArmFailure::Unhealthy {
                after,
                last_check,
                output,
            } => write!(
                f,
                "the {arm} (revision `{rev}`) did not become healthy, so there is no verdict:\n  {addr} was not healthy after {after} (last check: {last_check}); its last output:\n{}\n  = help: revision `{rev}` must listen on its {{{{port}}}} and answer the service's `health` check within `start_timeout`; raise `start_timeout` if it starts slowly",
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
    use pipeline_engine::plan::Action;

    fn failed(addr: &str, error: ProviderError) -> Vec<Failure> {
        vec![Failure {
            addr: addr.into(),
            action: Action::Create,
            error,
        }]
    }

    #[test]
    fn a_build_cause_gets_the_build_advice() {
        let e = ProviderError::new(
            "the build of service.candidate[0] failed (exit status: 1): `sh build.sh`",
        )
        .cause(Cause::Build {
            command: "sh build.sh".into(),
            status: "exit status: 1".into(),
            output: vec!["error[E0425]: oops".into(), " --> src/main.rs:3:5".into()],
        });
        let f = ArmsFailed::new("main", "nobuild", &failed("service.candidate[0]", e));
        assert_eq!(
            f.arms[0].failure,
            ArmFailure::Build {
                command: "sh build.sh".into(),
                status: "exit status: 1".into(),
                output: vec!["error[E0425]: oops".into(), " --> src/main.rs:3:5".into()],
            }
        );
        assert_eq!(
            f.to_string(),
            "the candidate (revision `nobuild`) did not build, so there is no verdict:\n  `sh build.sh` failed (exit status: 1); the last lines it wrote:\n  | error[E0425]: oops\n  |  --> src/main.rs:3:5\n  = help: fix the build of `nobuild` (run `sh build.sh` in a checkout of it to see the whole output), then run the canary again"
        );
    }

    #[test]
    fn an_exit_before_health_gets_the_run_advice() {
        let e =
            ProviderError::new("replica x: `./app` exited with status 3 before becoming healthy")
                .cause(Cause::ExitedBeforeHealthy {
                    how: "exited with status 3".into(),
                    output: vec!["fatal: cannot read config.toml".into()],
                });
        let f = ArmsFailed::new("main", "crash", &failed("service.candidate[0]", e));
        assert_eq!(
            f.to_string(),
            "the candidate (revision `crash`) exited before it became healthy, so there is no verdict:\n  service.candidate[0] exited with status 3; its last output:\n  | fatal: cannot read config.toml\n  = help: start revision `crash` by hand with the service's `run` command to see why it stops: it must keep running and listen on its {{port}}"
        );
    }

    #[test]
    fn a_health_check_that_never_passed_names_the_wait_and_the_last_check() {
        let e = ProviderError::new("replica x: not healthy after 3s").cause(Cause::NeverHealthy {
            after: "3s".into(),
            last_check: "connection refused".into(),
            output: vec![],
        });
        let f = ArmsFailed::new("main", "deaf", &failed("service.baseline[1]", e));
        assert_eq!(f.arms[0].arm, "baseline");
        assert_eq!(
            f.to_string(),
            "the baseline (revision `main`) did not become healthy, so there is no verdict:\n  service.baseline[1] was not healthy after 3s (last check: connection refused); its last output:\n  (it wrote nothing)\n  = help: revision `main` must listen on its {{port}} and answer the service's `health` check within `start_timeout`; raise `start_timeout` if it starts slowly"
        );
    }

    #[test]
    fn an_error_without_a_cause_is_shown_as_it_is() {
        // Whatever its words: no cause, no guess.
        let e = ProviderError::new("the build of service.candidate failed (exit status: 1): `x`")
            .help("h");
        let f = ArmsFailed::new("main", "c", &failed("service.candidate[0]", e.clone()));
        assert_eq!(
            f.arms[0].failure,
            ArmFailure::Other {
                message: e.to_string()
            }
        );
        // Only the balancer failed: no arm to blame.
        let f = ArmsFailed::new(
            "main",
            "b",
            &failed("balancer.canary", ProviderError::new("nginx: not found")),
        );
        assert!(f.arms.is_empty());
        assert!(f
            .to_string()
            .starts_with("the canary's balancer did not come up"));
        // A block whose name merely begins like an arm's is not that arm.
        let f = ArmsFailed::new(
            "main",
            "b",
            &failed("service.candidates[0]", ProviderError::new("x")),
        );
        assert!(f.arms.is_empty());
    }
}
