//! The `monitor` provider: a heartbeat and metrics collector with a live dashboard.
//! (Being built: see CHECKPOINT.md.)

use async_trait::async_trait;
use pipeline_engine::provider::{
    ApplyRequest, JsonMap, KindSchema, PlanRequest, Planned, Provider, ProviderCtx, ProviderError,
};

pub struct Monitor;

/// Entry point of `pipeline __monitor DIR` (a supervised daemon); returns the exit code.
pub fn run_daemon(_dir: &std::path::Path) -> i32 {
    2
}

#[async_trait]
impl Provider for Monitor {
    fn name(&self) -> &'static str {
        "monitor"
    }
    fn kinds(&self) -> Vec<KindSchema> {
        vec![]
    }
    fn plan(&self, _ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
        Err(ProviderError::new(format!(
            "monitor does not serve {}",
            req.kind
        )))
    }
    async fn read(
        &self,
        _ctx: &ProviderCtx,
        kind: &str,
        _addr: &str,
        _prior: &JsonMap,
    ) -> Result<Option<JsonMap>, ProviderError> {
        Err(ProviderError::new(format!("monitor does not serve {kind}")))
    }
    async fn apply(
        &self,
        _ctx: &ProviderCtx,
        req: &ApplyRequest<'_>,
    ) -> Result<JsonMap, ProviderError> {
        Err(ProviderError::new(format!(
            "monitor does not serve {}",
            req.kind
        )))
    }
    async fn delete(
        &self,
        _ctx: &ProviderCtx,
        kind: &str,
        _addr: &str,
        _prior: &JsonMap,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::new(format!("monitor does not serve {kind}")))
    }
}
