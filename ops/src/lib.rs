//! `pipeline-ops`: the operations behind the commands. Each takes a request, reports progress
//! through a callback and returns an outcome; the binary parses options and renders outcomes.
//! Nothing here prints, reads the command line or decides an exit code.

pub mod apply;
pub mod canary;
pub mod flags;
pub mod hook;
pub mod inventory;
pub mod module;
pub mod plan;
pub mod rollout;
pub mod status;
pub mod workspace;

pub use workspace::{diags, recorded_ctx, variables, LocalStacks, Reported, Workspace};
