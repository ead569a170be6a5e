//! One function per command: read its options, call one operation, render the result.
//! A child of `commands` (it uses the command-line types and the apply/plan helpers there).

pub mod apply;
pub mod canary;
pub mod deploy;
pub mod docs;
pub mod flags;
pub mod fmt;
pub mod hook;
pub mod inventory;
pub mod plan;
pub mod rollout;
pub mod show;
pub mod state;
pub mod status;
