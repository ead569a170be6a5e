//! The `redis` provider: `flags`, a redis-server feature-flag store with a primary and a mirror
//! (read-only replica) per host that runs instances. See [`flags`] for the kind, [`store`] for
//! how a flag is kept in redis, and [`resp`] for the small client everything uses.

mod actions;
mod describe;
pub mod flags;
pub mod remote;
pub mod resp;
pub mod store;

use async_trait::async_trait;
use pipeline_engine::format::Format;
use pipeline_engine::provider::{
    ApplyRequest, AttrSchema, Invalid, JsonMap, KindSchema, PlanRequest, Planned, Provider,
    ProviderCtx, ProviderError, Type,
};
use pipeline_engine::value::ValueMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The provider; `provider "redis" { binary = "/usr/bin/redis-server" }` configures an instance
/// that runs that executable.
#[derive(Default)]
pub struct Redis {
    /// The redis-server the block names; None: redis-server on PATH.
    binary: Option<PathBuf>,
}

/// The `binary` setting: an absolute path to an executable file.
fn configured_binary(config: &ValueMap) -> Result<Option<PathBuf>, Invalid> {
    pipeline_host::settings::executable(config, "redis-server", "/usr/bin/redis-server")
}

fn unknown_kind(kind: &str) -> ProviderError {
    ProviderError::new(format!("redis does not serve {kind}"))
}

#[async_trait]
impl Provider for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }
    async fn sweep(
        &self,
        ctx: &ProviderCtx,
        owned: &[(&str, &pipeline_engine::state::ResourceState)],
    ) -> Result<Vec<String>, ProviderError> {
        crate::sweep_run_dirs(ctx, owned, |d| d.join("primary").is_dir()).await
    }

    fn kinds(&self) -> Vec<KindSchema> {
        vec![flags::schema()]
    }
    fn config_schema(&self) -> Vec<AttrSchema> {
        vec![AttrSchema::optional("binary", Type::String).format(Format::FilePath)]
    }
    fn configure(&self, config: &ValueMap) -> Result<Option<Arc<dyn Provider>>, Vec<Invalid>> {
        Ok(configured_binary(config)
            .map_err(|e| vec![e])?
            .map(|b| Arc::new(Redis { binary: Some(b) }) as Arc<dyn Provider>))
    }
    fn validate(&self, kind: &str, config: &ValueMap) -> Vec<Invalid> {
        match kind {
            "flags" => flags::validate(config),
            _ => vec![],
        }
    }
    fn plan(&self, ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
        match req.kind {
            "flags" => flags::plan(ctx, req, self.binary.as_deref()),
            k => Err(unknown_kind(k)),
        }
    }
    async fn read(
        &self,
        ctx: &ProviderCtx,
        kind: &str,
        addr: &str,
        prior: &JsonMap,
    ) -> Result<Option<JsonMap>, ProviderError> {
        match kind {
            "flags" if remote::is_remote_record(prior) => remote::read(ctx, addr, prior).await,
            "flags" => flags::read(ctx, addr, prior),
            k => Err(unknown_kind(k)),
        }
    }
    /// A store on inventory hosts: the role's `--check` there, summaries only (its
    /// configuration holds the password). A local store has nothing to preview.
    async fn preview(
        &self,
        ctx: &ProviderCtx,
        req: &PlanRequest<'_>,
    ) -> Result<Vec<pipeline_engine::provider::TargetPreview>, ProviderError> {
        match req.kind {
            "flags" if remote::is_remote(req.config) => remote::preview(ctx, req).await,
            _ => Ok(Vec::new()),
        }
    }
    async fn apply(
        &self,
        ctx: &ProviderCtx,
        req: &ApplyRequest<'_>,
        step: &pipeline_engine::Step,
    ) -> Result<JsonMap, ProviderError> {
        match req.kind {
            "flags" if remote::is_remote(req.config) => remote::apply(ctx, req, step).await,
            "flags" => flags::apply(ctx, req, self.binary.clone(), step).await,
            k => Err(unknown_kind(k)),
        }
    }
    async fn delete(
        &self,
        ctx: &ProviderCtx,
        kind: &str,
        addr: &str,
        prior: &JsonMap,
        step: &pipeline_engine::Step,
    ) -> Result<(), ProviderError> {
        match kind {
            "flags" if remote::is_remote_record(prior) => {
                remote::delete(ctx, addr, prior, step).await
            }
            "flags" => flags::delete(ctx, addr).await,
            k => Err(unknown_kind(k)),
        }
    }
    async fn describe(
        &self,
        ctx: &ProviderCtx,
        _kind: &str,
        addr: &str,
        record: &JsonMap,
    ) -> Result<pipeline_engine::provider::Description, ProviderError> {
        if remote::is_remote_record(record) {
            return remote::describe(ctx, addr, record).await;
        }
        let (base, r) = (flags::base_dir(&ctx.work_dir, addr), record.clone());
        crate::blocking(move || Ok(describe::flags(&base, &r))).await
    }
    fn actions(&self, kind: &str) -> Vec<pipeline_engine::provider::ActionSchema> {
        actions::schemas(kind)
    }
    async fn action(
        &self,
        _ctx: &ProviderCtx,
        kind: &str,
        addr: &str,
        record: &JsonMap,
        name: &str,
        args: &JsonMap,
    ) -> Result<pipeline_engine::provider::ActionOutput, ProviderError> {
        if kind != "flags" {
            return Err(unknown_kind(kind));
        }
        let (addr, record, name, args) = (
            addr.to_string(),
            record.clone(),
            name.to_string(),
            args.clone(),
        );
        crate::blocking(move || actions::run(&addr, &record, &name, &args)).await
    }
}
