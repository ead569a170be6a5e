//! The `local` provider, the embedded default: this machine as a host, files, and services run
//! as supervised processes on loopback. No cloud, no root, no container engine.

mod actions;
pub mod canary;
mod describe;
mod file;
mod netns;
mod service;
pub mod slot;

use async_trait::async_trait;
use pipeline_engine::provider::{
    Aborted, ApplyRequest, AttrSchema, Description, Invalid, JsonMap, KindSchema, PlanRequest,
    Planned, Provider, ProviderCtx, ProviderError, Rollout, Staged, Step, Type,
};
use pipeline_engine::value::{Value, ValueMap};

/// Names of the network namespaces service generations run in (for leak checks).
pub use netns::{name as netns_name, prefix as netns_prefix};
pub use service::{
    canary_candidates, generation_dir, replica_dir, rollback, sanitize, update_policy, UpdatePolicy,
};

pub struct Local;

fn host_schema() -> KindSchema {
    KindSchema {
        kind: "host",
        attrs: vec![
            AttrSchema::optional("labels", Type::Map(Box::new(Type::String))),
            AttrSchema::computed("address", Type::String).derived_from(&[]),
            AttrSchema::computed("hostname", Type::String).derived_from(&[]),
        ],
        instances_attr: None,
    }
}

fn host_object(config: &ValueMap) -> ValueMap {
    let mut o = config.clone();
    o.insert("address".into(), Value::str("127.0.0.1"));
    o.insert("hostname".into(), Value::str(hostname()));
    o
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub(crate) fn to_json_map(v: &ValueMap) -> JsonMap {
    v.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()
}

#[async_trait]
impl Provider for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn kinds(&self) -> Vec<KindSchema> {
        vec![host_schema(), file::schema(), service::schema()]
    }

    fn validate(&self, kind: &str, config: &ValueMap) -> Vec<Invalid> {
        match kind {
            "file" => file::validate(config),
            "service" => service::validate(config),
            _ => vec![],
        }
    }

    fn plan(&self, ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
        match req.kind {
            "host" => Ok(Planned {
                object: host_object(req.config),
                requires_replace: vec![],
            }),
            "file" => file::plan(ctx, req),
            "service" => service::plan(ctx, req),
            k => Err(ProviderError::new(format!("local does not serve {k}"))),
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
            "host" => Ok(Some(prior.clone())),
            "file" => file::read(ctx, prior),
            "service" => service::read(ctx, addr, prior),
            k => Err(ProviderError::new(format!("local does not serve {k}"))),
        }
    }

    async fn apply(
        &self,
        ctx: &ProviderCtx,
        req: &ApplyRequest<'_>,
        step: &Step,
    ) -> Result<JsonMap, ProviderError> {
        match req.kind {
            "host" => Ok(to_json_map(&host_object(req.config))),
            "file" => file::apply(ctx, req),
            "service" => service::apply(ctx, req, step).await,
            k => Err(ProviderError::new(format!("local does not serve {k}"))),
        }
    }

    fn rollout(&self, kind: &str, config: &ValueMap) -> Option<Rollout> {
        let p = (kind == "service")
            .then(|| service::update_policy(config).ok())
            .flatten()?;
        Some(Rollout {
            parallel: p.parallel,
            two_phase: p.blue_green,
            progressive: p.canary,
            describe: p.canary.then(|| {
                let spec = crate::canary::CanarySpec::from_value(
                    config.get("canary").unwrap_or(&Value::Null),
                )
                .unwrap_or_default();
                format!(
                    "progressive canary: the new version gets {} % of the balancer's traffic, {:?} a step, judged against the old one",
                    spec.steps
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(" → "),
                    spec.interval
                )
            }),
        })
    }

    async fn analyze(
        &self,
        ctx: &ProviderCtx,
        kind: &str,
        block: &str,
        config: &ValueMap,
        members: &[Staged],
        step: &Step,
    ) -> Result<(), Aborted> {
        if kind != "service" {
            return Ok(());
        }
        let (ctx, block, config, members, step) = (
            ctx.clone(),
            block.to_string(),
            config.clone(),
            members.to_vec(),
            step.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let progress = step.progress.clone();
            canary::analyze(
                &ctx,
                &block,
                &config,
                &members,
                progress,
                step.cancel.flag(),
                &step.peers,
            )
        })
        .await
        .unwrap_or_else(|e| {
            Err(Aborted {
                step: 0,
                reason: format!("the canary analysis failed: {e}"),
            })
        })
    }

    async fn stage(
        &self,
        ctx: &ProviderCtx,
        req: &ApplyRequest<'_>,
        step: &Step,
    ) -> Result<JsonMap, ProviderError> {
        match req.kind {
            "service" => service::stage(ctx, req, step).await,
            _ => self.apply(ctx, req, step).await,
        }
    }

    async fn commit(
        &self,
        ctx: &ProviderCtx,
        kind: &str,
        addr: &str,
        staged: &JsonMap,
        step: &Step,
    ) -> Result<JsonMap, ProviderError> {
        match kind {
            "service" => service::commit(ctx, addr, staged, &step.peers).await,
            _ => Ok(staged.clone()),
        }
    }

    async fn abort(
        &self,
        ctx: &ProviderCtx,
        kind: &str,
        addr: &str,
        staged: &JsonMap,
        step: &Step,
    ) -> Result<(), ProviderError> {
        match kind {
            "service" => service::abort(ctx, addr, staged, &step.peers).await,
            _ => Ok(()),
        }
    }

    async fn sweep(
        &self,
        ctx: &ProviderCtx,
        owned: &[(&str, &pipeline_engine::state::ResourceState)],
    ) -> Result<Vec<String>, ProviderError> {
        let ctx = ctx.clone();
        let owned: Vec<(String, pipeline_engine::state::ResourceState)> = owned
            .iter()
            .map(|(a, r)| (a.to_string(), (*r).clone()))
            .collect();
        crate::blocking(move || {
            let owned: Vec<(&str, &pipeline_engine::state::ResourceState)> =
                owned.iter().map(|(a, r)| (a.as_str(), r)).collect();
            service::sweep_orphans(&ctx, &owned)
        })
        .await
    }

    async fn delete(
        &self,
        ctx: &ProviderCtx,
        kind: &str,
        addr: &str,
        prior: &JsonMap,
        _step: &Step,
    ) -> Result<(), ProviderError> {
        match kind {
            "host" => Ok(()),
            "file" => file::delete(ctx, prior),
            "service" => service::delete(ctx, addr).await,
            k => Err(ProviderError::new(format!("local does not serve {k}"))),
        }
    }

    async fn describe(
        &self,
        ctx: &ProviderCtx,
        kind: &str,
        addr: &str,
        record: &JsonMap,
    ) -> Result<Description, ProviderError> {
        match kind {
            "service" => {
                let (w, a, r) = (ctx.work_dir.clone(), addr.to_string(), record.clone());
                crate::blocking(move || Ok(describe::service(&w, &a, &r))).await
            }
            _ => Ok(Description::default()),
        }
    }

    fn actions(&self, kind: &str) -> Vec<pipeline_engine::provider::ActionSchema> {
        actions::schemas(kind)
    }

    async fn action(
        &self,
        ctx: &ProviderCtx,
        kind: &str,
        addr: &str,
        record: &JsonMap,
        name: &str,
        _args: &JsonMap,
    ) -> Result<pipeline_engine::provider::ActionOutput, ProviderError> {
        if kind != "service" {
            return Err(pipeline_engine::provider::unknown_action(
                "local",
                kind,
                addr,
                name,
                &[],
            ));
        }
        let (ctx, addr, record, name) = (
            ctx.clone(),
            addr.to_string(),
            record.clone(),
            name.to_string(),
        );
        crate::blocking(move || actions::run(&ctx, &addr, &record, &name)).await
    }
}
