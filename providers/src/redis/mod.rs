//! The `redis` provider: `flags`, a redis-server feature-flag store with a mirror per host.
//! (Being built: see CHECKPOINT.md.)

use async_trait::async_trait;
use pipeline_engine::provider::{
    ApplyRequest, JsonMap, KindSchema, PlanRequest, Planned, Provider, ProviderCtx, ProviderError,
};

pub struct Redis;

#[async_trait]
impl Provider for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }
    fn kinds(&self) -> Vec<KindSchema> {
        vec![]
    }
    fn plan(&self, _ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
        Err(ProviderError::new(format!(
            "redis does not serve {}",
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
        Err(ProviderError::new(format!("redis does not serve {kind}")))
    }
    async fn apply(
        &self,
        _ctx: &ProviderCtx,
        req: &ApplyRequest<'_>,
    ) -> Result<JsonMap, ProviderError> {
        Err(ProviderError::new(format!(
            "redis does not serve {}",
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
        Err(ProviderError::new(format!("redis does not serve {kind}")))
    }
}
