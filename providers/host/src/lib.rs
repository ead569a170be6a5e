//! What providers share, so that no provider imports another: how an instance's address
//! becomes a directory name, the host an instance runs `on`, /proc sampling, the nginx access
//! log format, and following a growing log file. Each exists here once (providers/tests check).
//!
//! Depends on the engine's value types only; knows no provider.

pub mod access_log;
pub mod names;
pub mod nginx;
pub mod on;
pub mod procfs;
pub mod settings;
pub mod supervised;
pub mod tail;
