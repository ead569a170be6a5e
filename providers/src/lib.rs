//! Providers: the only code that touches hosts, processes and files. Each serves some block
//! kinds through `pipeline_engine::provider::Provider`.

pub mod canary;
pub mod local;
pub mod monitor;
pub mod nginx;
pub mod quote;
pub mod redis;

use pipeline_engine::provider::{ProviderError, Registry};
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

/// Run blocking provider work (process starts, waits, file I/O) off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProviderError> + Send + 'static,
) -> Result<T, ProviderError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProviderError::new(format!("a provider task failed: {e}")))?
}

/// "500ms", "2s", "1.5m" (a bare number is seconds); None for anything else.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| std::time::Duration::from_secs_f64(secs))
}
