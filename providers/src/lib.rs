//! Providers: the only code that touches hosts, processes and files. Each serves some block
//! kinds through `pipeline_engine::provider::Provider`.

pub mod local;
pub mod monitor;
pub mod nginx;
pub mod redis;

use pipeline_engine::provider::Registry;
use std::sync::Arc;

/// Every provider this binary carries.
pub fn registry() -> Registry {
    let mut r = Registry::default();
    r.add(Arc::new(local::Local));
    r.add(Arc::new(nginx::Nginx));
    r.add(Arc::new(redis::Redis));
    r.add(Arc::new(monitor::Monitor));
    r
}
