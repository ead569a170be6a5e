//! The pipeline engine: stack language, config model, graph, plan, apply and the provider trait.
//! Data flows down: lang → config → graph → plan → apply → providers. Only providers touch the world.

#![allow(clippy::result_large_err)]

pub mod apply;
pub mod config;
pub mod configure;
pub mod diag;
pub mod format;
pub mod graph;
pub mod lang;
pub mod plan;
pub mod provider;
pub mod step;
pub mod value;
pub mod wait;
pub mod world;

pub use pipeline_state as state;

pub use step::{CancelToken, Step, Timeouts};
