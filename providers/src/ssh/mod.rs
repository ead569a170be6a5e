//! The `ssh` provider: hosts of an Ansible inventory as `host` instances.
//!
//! `provider "ssh" { inventory = "inventory.ini" }` (a path relative to the stack's directory;
//! `-i FILE` on the command line overrides it) loads the inventory once per run, in
//! `configure`. `host "web" { provider = ssh  group = "web" }` is then one instance per host of
//! the group, keyed by inventory name (`host.web["web01"]`), in inventory order, through the
//! engine's expansion hook (`Provider::expansion`/`expand`). Each instance carries the host's
//! connection settings (`address`, `port`, `user`, `key_file`, `become`), its `groups` and its
//! variables (`vars`, strings; passwords marked sensitive).
//!
//! Applying a host connects to it ([`crate::remote`]) and records the host keys first seen as
//! `host_key`; every later connection (this host's, and those of resources placed on it) is
//! checked against them. A changed key is refused, naming `-replace` as the way to accept it.

pub mod database;
pub mod host;

use crate::remote as conn;
pub mod service;

use async_trait::async_trait;
use pipeline_engine::format::Format;
use pipeline_engine::provider::{
    ActionOutput, ActionSchema, ApplyRequest, AttrSchema, Description, Invalid, JsonMap,
    KindSchema, PlanRequest, Planned, Provider, ProviderCtx, ProviderError, Step, Type,
};
use pipeline_engine::value::{Value, ValueMap};
use pipeline_inventory::Inventory;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The provider. The registered instance has no inventory; `configure` makes one that has.
#[derive(Default)]
pub struct Ssh {
    inventory: Option<Arc<Inventory>>,
    /// `user` of the block: for hosts whose inventory names none.
    user: Option<String>,
    /// `private_key_file` of the block: for hosts whose inventory names none.
    key_file: Option<String>,
}

/// The action `pipeline inventory` asks every recorded instance's provider for: a host's
/// connection settings as an inventory line needs them.
pub use pipeline_engine::provider::INVENTORY_HOST_ACTION as INVENTORY_HOST;

fn string_setting(config: &ValueMap, name: &str) -> Option<String> {
    match config.get(name).map(|v| v.unmarked().0) {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

impl Ssh {
    /// The inventory at `path` (relative to `stack_dir`), read once.
    fn load(stack_dir: &Path, path: &str) -> Result<Inventory, Invalid> {
        let p = PathBuf::from(path);
        let p = if p.is_absolute() {
            p
        } else {
            stack_dir.join(p)
        };
        Inventory::load(&p).map_err(|e| {
            let help = e.help_text().unwrap_or("").to_string();
            // The inventory's own `file:line:col`, line and caret, as it reports them.
            let text = e.to_string();
            let message = match text.find("\n  help: ") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            Invalid::new(None, message, help)
        })
    }

    /// A host instance's attributes: the block's (`group`) and the inventory host's, found by
    /// the instance's key (`web01` of `host.web["web01"]`).
    fn object(&self, kind: &str, addr: &str, config: &ValueMap) -> Result<ValueMap, ProviderError> {
        if kind != host::KIND {
            return Err(ProviderError::new(format!("ssh does not serve {kind}")));
        }
        let name = host::instance_key(addr).ok_or_else(|| {
            ProviderError::invalid_config(format!(
                "{addr}: an ssh host is one of an inventory group's hosts"
            ))
            .attr("group")
            .help("write group = \"NAME\" (an inventory group)")
        })?;
        let inventory = self.inventory()?;
        let h = inventory.host(&name).ok_or_else(|| {
            ProviderError::invalid_config(format!(
                "{addr}: the inventory {} has no host '{name}'",
                inventory.source()
            ))
            .attr("group")
        })?;
        let mut object = config.clone();
        object.extend(host::attributes(
            h,
            self.user.as_deref(),
            self.key_file.as_deref(),
        ));
        Ok(object)
    }

    fn inventory(&self) -> Result<&Inventory, ProviderError> {
        self.inventory.as_deref().ok_or_else(|| {
            ProviderError::invalid_config("the ssh provider has no inventory to take hosts from")
                .help("give one with `-i inventory.ini`, or write `provider \"ssh\" { inventory = \"inventory.ini\" }` in the stack")
        })
    }
}

#[async_trait]
impl Provider for Ssh {
    fn name(&self) -> &'static str {
        "ssh"
    }

    fn kinds(&self) -> Vec<KindSchema> {
        vec![host::schema(), service::schema(), database::schema()]
    }

    fn config_schema(&self) -> Vec<AttrSchema> {
        vec![
            // An Ansible INI inventory, relative to the stack's directory.
            AttrSchema::optional("inventory", Type::String).format(Format::FilePath),
            // For hosts whose inventory gives no `ansible_user`.
            AttrSchema::optional("user", Type::String).format(Format::Line),
            // For hosts whose inventory gives no `ansible_ssh_private_key_file`.
            AttrSchema::optional("private_key_file", Type::String).format(Format::FilePath),
        ]
    }

    fn configure(&self, config: &ValueMap) -> Result<Option<Arc<dyn Provider>>, Vec<Invalid>> {
        self.configure_in(Path::new("."), config)
    }

    fn configure_in(
        &self,
        stack_dir: &Path,
        config: &ValueMap,
    ) -> Result<Option<Arc<dyn Provider>>, Vec<Invalid>> {
        let inventory = match string_setting(config, "inventory") {
            Some(path) => Some(Arc::new(Self::load(stack_dir, &path).map_err(|e| vec![e])?)),
            None => None,
        };
        Ok(Some(Arc::new(Ssh {
            inventory,
            user: string_setting(config, "user"),
            key_file: string_setting(config, "private_key_file"),
        })))
    }

    fn expansion(&self, kind: &str) -> Option<&'static str> {
        (kind == host::KIND).then_some("group")
    }

    fn expand(&self, kind: &str, value: &Value) -> Result<Vec<(String, Value)>, ProviderError> {
        if kind != host::KIND {
            return Err(ProviderError::new(format!("ssh does not expand {kind}")));
        }
        let group = match value.unmarked().0 {
            Value::String(s) => s,
            other => {
                return Err(ProviderError::invalid_config(format!(
                    "`group` must be the name of an inventory group, found {}",
                    other.type_name()
                ))
                .help("write group = \"web\""))
            }
        };
        let inventory = self.inventory()?;
        let hosts = inventory.hosts_of(&group).map_err(|e| {
            let mut err =
                ProviderError::invalid_config(format!("{}: {}", e.location(), e.message()));
            err.help = e.help_text().map(str::to_string);
            err
        })?;
        Ok(hosts
            .iter()
            .map(|h| {
                (
                    h.name.clone(),
                    Value::Map(host::attributes(
                        h,
                        self.user.as_deref(),
                        self.key_file.as_deref(),
                    )),
                )
            })
            .collect())
    }

    fn validate(&self, kind: &str, config: &ValueMap) -> Vec<Invalid> {
        if kind == service::KIND {
            return service::validate(config);
        }
        Vec::new()
    }

    fn plan(&self, ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
        if req.kind == service::KIND {
            return service::plan(ctx, req);
        }
        if req.kind == database::KIND {
            return database::plan(ctx, req);
        }
        let mut object = self.object(req.kind, req.addr, req.config)?;
        object.insert("resource".into(), Value::str(req.addr));
        // The keys pinned stay; a new host's are known once it is reached.
        let key = match req.prior.and_then(|p| p.get("host_key")) {
            Some(k) if !k.is_null() => Value::from_json(k),
            _ => Value::Unknown,
        };
        object.insert("host_key".into(), key);
        Ok(Planned {
            object,
            requires_replace: vec![],
        })
    }

    async fn read(
        &self,
        ctx: &ProviderCtx,
        kind: &str,
        addr: &str,
        prior: &JsonMap,
    ) -> Result<Option<JsonMap>, ProviderError> {
        if kind == service::KIND {
            return service::read(ctx, addr, prior).await;
        }
        if kind == database::KIND {
            return database::read(ctx, addr, prior).await;
        }
        Ok(Some(prior.clone()))
    }

    /// A service's dry run on its hosts (the role in `--check --diff`); a host has none.
    async fn preview(
        &self,
        ctx: &ProviderCtx,
        req: &PlanRequest<'_>,
    ) -> Result<Vec<pipeline_engine::provider::TargetPreview>, ProviderError> {
        if req.kind == service::KIND {
            return service::preview(ctx, req).await;
        }
        Ok(Vec::new())
    }

    async fn apply(
        &self,
        ctx: &ProviderCtx,
        req: &ApplyRequest<'_>,
        step: &Step,
    ) -> Result<JsonMap, ProviderError> {
        if req.kind == service::KIND {
            return service::apply(ctx, req, step).await;
        }
        if req.kind == database::KIND {
            return database::apply(ctx, req, step).await;
        }
        // The engine hands apply the block's evaluated attributes: the host's come from the
        // inventory again (the same one the plan read: it is loaded once per run).
        let mut object = self.object(req.kind, req.addr, req.config)?;
        object.insert("resource".into(), Value::str(req.addr));
        let mut record: JsonMap = object
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect();
        // An update keeps checking the keys pinned before; a create pins what the host offers.
        let pinned = req.prior.map(conn::pinned).unwrap_or_default();
        record.insert("host_key".into(), serde_json::json!(pinned));
        if record.get("transport").and_then(|t| t.as_str()) == Some("local") {
            // `ansible_connection=local`: this machine, nothing to reach.
            return Ok(record);
        }
        step.progress(format!(
            "connecting to {}",
            record
                .get("address")
                .and_then(|a| a.as_str())
                .unwrap_or("?")
        ));
        let keys = conn::connect(ctx, &record, req.addr).await?;
        record.insert("host_key".into(), serde_json::json!(keys));
        Ok(record)
    }

    async fn delete(
        &self,
        ctx: &ProviderCtx,
        kind: &str,
        addr: &str,
        prior: &JsonMap,
        step: &Step,
    ) -> Result<(), ProviderError> {
        if kind == service::KIND {
            return service::delete(ctx, addr, prior, step).await;
        }
        if kind == database::KIND {
            return database::delete(ctx, addr, prior, step).await;
        }
        // Nothing was made on the host: forgetting it is all there is.
        Ok(())
    }

    async fn describe(
        &self,
        ctx: &ProviderCtx,
        kind: &str,
        addr: &str,
        record: &JsonMap,
    ) -> Result<Description, ProviderError> {
        if kind == service::KIND {
            return service::describe(ctx, addr, record).await;
        }
        if kind == database::KIND {
            return database::describe(ctx, addr, record).await;
        }
        Ok(Description::default())
    }

    fn actions(&self, kind: &str) -> Vec<ActionSchema> {
        if kind == service::KIND {
            return crate::progressive::control_schemas();
        }
        if kind != host::KIND {
            return Vec::new();
        }
        vec![ActionSchema {
            name: INVENTORY_HOST,
            about: "the host's connection settings, as an inventory line needs them",
            args: vec![],
            changes_record: false,
        }]
    }

    async fn action(
        &self,
        ctx: &ProviderCtx,
        kind: &str,
        addr: &str,
        record: &JsonMap,
        name: &str,
        _args: &JsonMap,
    ) -> Result<ActionOutput, ProviderError> {
        if kind == host::KIND && name == INVENTORY_HOST {
            return Ok(ActionOutput::output(host::inventory_entry(record)));
        }
        if kind == service::KIND && ["canary", "promote", "abort"].contains(&name) {
            // One instance per block: its address is the block's.
            let (work_dir, block, name) =
                (ctx.work_dir.clone(), addr.to_string(), name.to_string());
            return crate::blocking(move || {
                crate::progressive::control(&work_dir, &block, &name).map(ActionOutput::output)
            })
            .await;
        }
        Err(pipeline_engine::provider::unknown_action(
            self.name(),
            kind,
            addr,
            name,
            &self.actions(kind),
        ))
    }
}
