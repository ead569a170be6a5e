//! Provider configuration blocks over in-memory providers: `provider "NAME" { alias = ... }`
//! parsed, evaluated and handed to `Provider::configure` once per run before anything is read or
//! planned; resources bound to a configuration by `provider = NAME.ALIAS`; settings missing, wrong
//! or secret. No process is started.
//!
//! The providers here are their own (not tests/fake's `Fake`): a configured instance is a new
//! object, and these record which configuration served each call.

use async_trait::async_trait;
use indexmap::IndexMap;
use pipeline_engine::apply::{self, ApplyOptions, Event};
use pipeline_engine::config;
use pipeline_engine::configure;
use pipeline_engine::diag::Diagnostics;
use pipeline_engine::graph::ConfigGraph;
use pipeline_engine::plan::{self, Plan, PlanOptions};
use pipeline_engine::provider::{
    ApplyRequest, AttrSchema, Invalid, JsonMap, KindSchema, PlanRequest, Planned, Provider,
    ProviderCtx, ProviderError, Registry, Type,
};
use pipeline_engine::state::{State, StateStore, JOURNAL_FILE};
use pipeline_engine::value::{Value, ValueMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What every instance of a provider did, in order: ("configure", label) or (op, "label addr").
#[derive(Default)]
struct Log {
    events: Vec<(String, String)>,
    /// The settings each `configure` got.
    configs: Vec<ValueMap>,
    /// The journal as it was when each apply call ran (its Pending line is written by then).
    journals: Vec<String>,
}

type Shared = Arc<Mutex<Log>>;

/// `cfg`: kind `widget`; settings `region` (required), `token` (sensitive, else the environment
/// variable `env`), `level` (number, default 1). A configured instance labels every call with its
/// region.
struct Cfg {
    log: Shared,
    env: &'static str,
    /// None: the registered, unconfigured instance (it must never serve a call).
    region: Option<String>,
}

impl Cfg {
    fn record(&self, op: &str, addr: &str) {
        let label = self.region.clone().unwrap_or_else(|| "UNCONFIGURED".into());
        self.log
            .lock()
            .unwrap()
            .events
            .push((op.to_string(), format!("{label} {addr}")));
    }
}

#[async_trait]
impl Provider for Cfg {
    fn name(&self) -> &'static str {
        "cfg"
    }
    fn kinds(&self) -> Vec<KindSchema> {
        vec![KindSchema {
            kind: "widget",
            attrs: vec![
                AttrSchema::optional("value", Type::String),
                AttrSchema::computed("id", Type::String),
            ],
            instances_attr: None,
        }]
    }
    fn config_schema(&self) -> Vec<AttrSchema> {
        vec![
            AttrSchema::required("region", Type::String)
                .format(pipeline_engine::format::Format::Line),
            AttrSchema::optional("token", Type::String).sensitive(),
            AttrSchema::optional("level", Type::Number).default(Value::Number(1.0)),
        ]
    }
    fn configure(&self, config: &ValueMap) -> Result<Option<Arc<dyn Provider>>, Vec<Invalid>> {
        let region = config
            .get("region")
            .map(|v| v.unmarked().0)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        {
            let mut log = self.log.lock().unwrap();
            log.events.push(("configure".into(), region.clone()));
            log.configs.push(config.clone());
        }
        let from_block = config.get("token").filter(|v| !matches!(v, Value::Null));
        if from_block.is_none() && std::env::var(self.env).is_err() {
            return Err(vec![Invalid::new(
                Some("token"),
                "no token: the block sets none and the environment has none",
                format!("export {}=TOKEN", self.env),
            )]);
        }
        Ok(Some(Arc::new(Cfg {
            log: self.log.clone(),
            env: self.env,
            region: Some(region),
        })))
    }
    fn plan(&self, _ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
        self.record("plan", req.addr);
        let mut object = req.config.clone();
        let id = req
            .prior
            .and_then(|p| p.get("id"))
            .map(Value::from_json)
            .unwrap_or(Value::Unknown);
        object.insert("id".into(), id);
        Ok(Planned {
            object,
            requires_replace: vec![],
        })
    }
    async fn read(
        &self,
        _ctx: &ProviderCtx,
        _kind: &str,
        addr: &str,
        prior: &JsonMap,
    ) -> Result<Option<JsonMap>, ProviderError> {
        self.record("read", addr);
        Ok(Some(prior.clone()))
    }
    async fn apply(
        &self,
        ctx: &ProviderCtx,
        req: &ApplyRequest<'_>,
        _step: &pipeline_engine::Step,
    ) -> Result<JsonMap, ProviderError> {
        self.record("apply", req.addr);
        let journal = std::fs::read_to_string(ctx.work_dir.join(JOURNAL_FILE)).unwrap_or_default();
        self.log.lock().unwrap().journals.push(journal);
        let mut out: JsonMap = req
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect();
        out.insert("id".into(), format!("id-{}", req.addr).into());
        Ok(out)
    }
    async fn delete(
        &self,
        _ctx: &ProviderCtx,
        _kind: &str,
        addr: &str,
        _prior: &JsonMap,
        _step: &pipeline_engine::Step,
    ) -> Result<(), ProviderError> {
        self.record("delete", addr);
        Ok(())
    }
}

/// `plain`: kind `gadget`, one setting `mode` with a default, no configured instance of its own
/// (`configure` answers None: the registered instance serves).
struct Plain {
    log: Shared,
}

#[async_trait]
impl Provider for Plain {
    fn name(&self) -> &'static str {
        "plain"
    }
    fn kinds(&self) -> Vec<KindSchema> {
        vec![KindSchema {
            kind: "gadget",
            attrs: vec![AttrSchema::optional("value", Type::String)],
            instances_attr: None,
        }]
    }
    fn config_schema(&self) -> Vec<AttrSchema> {
        vec![AttrSchema::optional("mode", Type::String).default(Value::str("fast"))]
    }
    fn configure(&self, config: &ValueMap) -> Result<Option<Arc<dyn Provider>>, Vec<Invalid>> {
        let mut log = self.log.lock().unwrap();
        log.events.push(("configure".into(), "plain".into()));
        log.configs.push(config.clone());
        Ok(None)
    }
    fn plan(&self, _ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
        Ok(Planned {
            object: req.config.clone(),
            requires_replace: vec![],
        })
    }
    async fn read(
        &self,
        _ctx: &ProviderCtx,
        _kind: &str,
        _addr: &str,
        prior: &JsonMap,
    ) -> Result<Option<JsonMap>, ProviderError> {
        Ok(Some(prior.clone()))
    }
    async fn apply(
        &self,
        _ctx: &ProviderCtx,
        req: &ApplyRequest<'_>,
        _step: &pipeline_engine::Step,
    ) -> Result<JsonMap, ProviderError> {
        Ok(req
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect())
    }
    async fn delete(
        &self,
        _ctx: &ProviderCtx,
        _kind: &str,
        _addr: &str,
        _prior: &JsonMap,
        _step: &pipeline_engine::Step,
    ) -> Result<(), ProviderError> {
        Ok(())
    }
}

struct Env {
    dir: tempfile::TempDir,
    log: Shared,
    plain: Shared,
    registry: Registry,
}

impl Env {
    /// `env`: the environment variable the `cfg` provider reads its token from; each test names
    /// its own, so tests running side by side in one process never see each other's.
    fn new(env: &'static str) -> Env {
        let log = Shared::default();
        let plain = Shared::default();
        let mut registry = Registry::default();
        registry.add(Arc::new(Cfg {
            log: log.clone(),
            env,
            region: None,
        }));
        registry.add(Arc::new(Plain { log: plain.clone() }));
        Env {
            dir: tempfile::tempdir().expect("temp dir"),
            log,
            plain,
            registry,
        }
    }
    fn state_dir(&self) -> std::path::PathBuf {
        self.dir.path().join(".pipeline")
    }
    fn ctx(&self) -> ProviderCtx {
        ProviderCtx {
            work_dir: self.state_dir(),
            stack_dir: self.dir.path().to_path_buf(),
            exe: "/nonexistent/pipeline".into(),
        }
    }
    fn state(&self) -> State {
        StateStore::load(&self.state_dir()).expect("state loads")
    }
    fn load(&self, stack: &str) -> Result<config::Config, Diagnostics> {
        let path = self.dir.path().join("stack.hcl");
        std::fs::write(&path, stack).expect("stack written");
        config::load(&path, &self.registry)
    }
    /// Load and configure, as a run does before refresh and plan.
    fn configure(
        &self,
        stack: &str,
        vars: &IndexMap<String, Value>,
    ) -> Result<(config::Config, Registry), Diagnostics> {
        let config = self.load(stack)?;
        let registry = configure::configure(&config, &self.registry, vars, &self.state())?;
        Ok((config, registry))
    }
    /// One run: configure, refresh, plan.
    async fn plan(
        &self,
        stack: &str,
        vars: &IndexMap<String, Value>,
    ) -> (Plan, config::Config, Registry) {
        let (config, registry) = self.configure(stack, vars).expect("configures");
        let graph = ConfigGraph::build(&config).expect("graph builds");
        let state = self.state();
        let ctx = self.ctx();
        let refreshed = plan::refresh(&registry, &ctx, &state, 4)
            .await
            .expect("refresh");
        let opts = PlanOptions {
            refresh: true,
            parallelism: 4,
            variables: vars.clone(),
            ..PlanOptions::default()
        };
        let p = plan::make_plan(
            &config,
            &graph,
            &registry,
            &ctx,
            &state,
            Some(&refreshed),
            &opts,
        )
        .expect("plan");
        (p, config, registry)
    }
    async fn apply_plan(
        &self,
        p: &Plan,
        config: &config::Config,
        registry: &Registry,
    ) -> Vec<Event> {
        let mut store = StateStore::open(&self.state_dir()).expect("state opens");
        let mut events = Vec::new();
        let mut on_event = |e: &Event| events.push(e.clone());
        let report = apply::apply(
            config,
            registry,
            &self.ctx(),
            &mut store,
            p,
            &ApplyOptions {
                parallelism: 4,
                cancel: Default::default(),
                grace: std::time::Duration::from_secs(1),
                retry: Default::default(),
            },
            &mut on_event,
        )
        .await
        .expect("apply runs");
        assert!(report.ok(), "{report:?}");
        events
    }
    async fn apply(&self, stack: &str, vars: &IndexMap<String, Value>) -> (Plan, Vec<Event>) {
        let (p, config, registry) = self.plan(stack, vars).await;
        let events = self.apply_plan(&p, &config, &registry).await;
        (p, events)
    }
    fn events(&self) -> Vec<(String, String)> {
        self.log.lock().unwrap().events.clone()
    }
    /// Every file of the state directory, as text.
    fn state_files(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.state_dir()).expect("state dir") {
            let p = e.expect("entry").path();
            if p.is_file() {
                out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
        out
    }
}

fn no_vars() -> IndexMap<String, Value> {
    IndexMap::new()
}

const TWO: &str = r#"
provider "cfg" {
  region = "home"
  token  = "t-home"
}

provider "cfg" {
  alias  = "west"
  region = "west"
  token  = "t-west"
}

widget "a" { value = "1" }

widget "b" {
  provider = cfg.west
  value    = widget.a.id
}

widget "c" {
  provider = "cfg.west"
  value    = "3"
}
"#;

/// Which configuration (region) served `op` for `addr`.
fn served(events: &[(String, String)], op: &str, addr: &str) -> Vec<String> {
    events
        .iter()
        .filter(|(o, l)| o == op && l.ends_with(&format!(" {addr}")))
        .map(|(_, l)| l.split(' ').next().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn configure_runs_once_per_configuration_per_run_before_any_read_or_plan() {
    let env = Env::new("CFG_TEST_TOKEN_ONCE");
    env.apply(TWO, &no_vars()).await;
    let ev = env.events();
    let configures: Vec<&str> = ev
        .iter()
        .filter(|(o, _)| o == "configure")
        .map(|(_, l)| l.as_str())
        .collect();
    assert_eq!(configures, vec!["home", "west"], "{ev:?}");
    let first_other = ev.iter().position(|(o, _)| o != "configure").unwrap();
    assert_eq!(
        first_other, 2,
        "both configured before anything else: {ev:?}"
    );
    assert!(
        !ev.iter().any(|(_, l)| l.starts_with("UNCONFIGURED")),
        "the registered instance served nothing: {ev:?}"
    );

    // A second run (its refresh reads what the first created) configures again, once each,
    // before its first read.
    let first_run = ev.len();
    env.apply(TWO, &no_vars()).await;
    let ev = env.events();
    let second = &ev[first_run..];
    let ops: Vec<&str> = second.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(&ops[..2], ["configure", "configure"], "{second:?}");
    assert!(!ops[2..].contains(&"configure"), "{second:?}");
    assert_eq!(ops[2], "read", "{second:?}");
    let reads = ops.iter().filter(|o| **o == "read").count();
    assert_eq!(reads, 3, "each recorded instance read once: {second:?}");
}

#[tokio::test]
async fn resources_are_served_by_the_configuration_they_select() {
    let env = Env::new("CFG_TEST_TOKEN_SELECT");
    env.apply(TWO, &no_vars()).await;
    let ev = env.events();
    assert_eq!(served(&ev, "plan", "widget.a"), vec!["home"]);
    assert_eq!(served(&ev, "apply", "widget.a"), vec!["home"]);
    // `provider = cfg.west` (a traversal) and `provider = "cfg.west"` (a string) alike.
    assert_eq!(served(&ev, "apply", "widget.b"), vec!["west"]);
    assert_eq!(served(&ev, "apply", "widget.c"), vec!["west"]);
    let st = env.state();
    assert_eq!(st.resources["widget.a"].provider, "cfg");
    assert_eq!(st.resources["widget.b"].provider, "cfg.west");
    assert_eq!(st.resources["widget.c"].provider, "cfg.west");

    // A removed block is read and deleted by the configuration that created it.
    let without_c = TWO.replace("widget \"c\"", "widget \"d\"");
    env.apply(&without_c, &no_vars()).await;
    let ev = env.events();
    assert_eq!(served(&ev, "read", "widget.c"), vec!["west"]);
    assert_eq!(served(&ev, "delete", "widget.c"), vec!["west"]);
}

#[test]
fn an_undeclared_alias_is_an_error_at_the_provider_attribute() {
    let env = Env::new("CFG_TEST_TOKEN_ALIAS");
    let stack = r#"
provider "cfg" {
  alias  = "west"
  region = "west"
}

widget "a" {
  provider = cfg.east
}
"#;
    let d = env.load(stack).expect_err("an undeclared alias is refused");
    let text = d.to_string();
    assert_eq!(d.0.len(), 1, "{text}");
    let e = &d.0[0];
    assert_eq!(
        e.summary,
        "no configuration of provider \"cfg\" has the alias \"east\""
    );
    let at = e.at.as_ref().expect("a location");
    assert_eq!((at.line, at.col), (8, 14), "{text}");
    let help = e.help.as_deref().unwrap_or_default();
    assert!(
        help.contains("provider \"cfg\" { alias = \"east\" }"),
        "{help}"
    );
    assert!(help.contains("declared for cfg: cfg.west"), "{help}");
}

#[test]
fn two_configurations_of_a_provider_need_distinct_aliases() {
    let env = Env::new("CFG_TEST_TOKEN_DUP");
    let stack = "provider \"cfg\" { region = \"a\" }\nprovider \"cfg\" { region = \"b\" }\n";
    let d = env.load(stack).expect_err("refused");
    assert_eq!(d.0.len(), 1, "{d}");
    let e = &d.0[0];
    assert_eq!(
        e.summary,
        "provider \"cfg\" is configured twice without an alias"
    );
    assert_eq!(e.at.as_ref().map(|l| l.line), Some(2));
    assert!(e.detail.as_deref().unwrap_or_default().contains(":1:1"));
    assert!(e
        .help
        .as_deref()
        .unwrap_or_default()
        .contains("alias = \"west\""));

    let stack = "provider \"cfg\" {\n  alias = \"x\"\n  region = \"a\"\n}\nprovider \"cfg\" {\n  alias = \"x\"\n  region = \"b\"\n}\n";
    let d = env.load(stack).expect_err("refused");
    assert_eq!(
        d.0[0].summary,
        "provider \"cfg\" has two configurations with the alias \"x\""
    );
    assert_eq!(d.0[0].at.as_ref().map(|l| l.line), Some(5));
}

#[test]
fn an_unknown_provider_or_setting_lists_what_exists() {
    let env = Env::new("CFG_TEST_TOKEN_UNKNOWN");
    let d = env.load("provider \"cgf\" {}\n").expect_err("refused");
    assert_eq!(d.0[0].summary, "unknown provider \"cgf\"");
    assert_eq!(
        d.0[0].help.as_deref(),
        Some("did you mean \"cfg\"? providers: cfg, plain")
    );
    let d = env
        .load("provider \"cfg\" {\n  region = \"a\"\n  regoin = \"b\"\n}\n")
        .expect_err("refused");
    assert_eq!(
        d.0[0].summary,
        "unknown attribute `regoin` in a provider \"cfg\" block"
    );
    assert_eq!(d.0[0].at.as_ref().map(|l| l.line), Some(3));
    let help = d.0[0].help.as_deref().unwrap_or_default();
    assert!(help.starts_with("did you mean `region`?"), "{help}");
}

#[test]
fn a_missing_required_setting_says_what_to_write() {
    let env = Env::new("CFG_TEST_TOKEN_MISSING");
    // In a block that leaves it out: at the block.
    let stack = "provider \"cfg\" {\n  alias = \"west\"\n  token = \"t\"\n}\nwidget \"a\" { provider = cfg.west }\n";
    let d = env.configure(stack, &no_vars()).expect_err("refused");
    assert_eq!(d.0.len(), 1, "{d}");
    let e = &d.0[0];
    assert_eq!(
        e.summary,
        "provider \"cfg\" (alias \"west\") needs the setting `region`"
    );
    assert_eq!(e.at.as_ref().map(|l| l.line), Some(1));
    assert_eq!(
        e.help.as_deref(),
        Some("write it in the stack: provider \"cfg\" { alias = \"west\", region = \"...\" }")
    );
    // Without a block at all: naming the resource that uses the provider.
    let d = env
        .configure("widget \"a\" {}\n", &no_vars())
        .expect_err("refused");
    let e = &d.0[0];
    assert_eq!(e.summary, "provider \"cfg\" needs the setting `region`");
    assert_eq!(e.detail.as_deref(), Some("used by widget.a"));
    assert_eq!(
        e.help.as_deref(),
        Some("write it in the stack: provider \"cfg\" { region = \"...\" }")
    );
    assert!(
        env.events().is_empty(),
        "configure is not called with a required setting missing"
    );
}

#[test]
fn a_setting_the_provider_rejects_names_the_block_and_the_setting() {
    let env = Env::new("CFG_TEST_TOKEN_NOT_SET_ANYWHERE");
    let stack = "provider \"cfg\" {\n  region = \"home\"\n}\nwidget \"a\" {}\n";
    let d = env.configure(stack, &no_vars()).expect_err("refused");
    assert_eq!(d.0.len(), 1, "{d}");
    let e = &d.0[0];
    assert_eq!(
        e.summary,
        "provider \"cfg\", setting `token`: no token: the block sets none and the environment has none"
    );
    assert_eq!(e.at.as_ref().map(|l| l.line), Some(1));
    assert_eq!(
        e.help.as_deref(),
        Some("export CFG_TEST_TOKEN_NOT_SET_ANYWHERE=TOKEN; or write it in the stack: provider \"cfg\" { token = \"...\" }")
    );
}

#[test]
fn settings_are_typed_format_checked_and_defaulted() {
    let env = Env::new("CFG_TEST_TOKEN_TYPES");
    let stack = "provider \"cfg\" {\n  region = \"a\\nb\"\n  token = \"t\"\n  level = \"high\"\n}\nwidget \"a\" {}\n";
    let d = env.configure(stack, &no_vars()).expect_err("refused");
    let text = d.to_string();
    assert_eq!(d.0.len(), 2, "{text}");
    assert!(
        d.0[0]
            .summary
            .starts_with("`region` of provider \"cfg\" is not"),
        "{text}"
    );
    assert_eq!(d.0[0].at.as_ref().map(|l| l.line), Some(2));
    assert!(
        d.0[1]
            .summary
            .starts_with("wrong type for `level` of provider \"cfg\""),
        "{text}"
    );
    assert_eq!(d.0[1].at.as_ref().map(|l| l.line), Some(4));

    let ok = "variable \"r\" { default = \"north\" }\nlocals { t = upper(\"tok\") }\nprovider \"cfg\" {\n  region = var.r\n  token = local.t\n}\nwidget \"a\" {}\n";
    env.configure(ok, &no_vars()).expect("configures");
    let log = env.log.lock().unwrap();
    let c = &log.configs[0];
    assert_eq!(c["region"], Value::str("north"));
    assert_eq!(c["token"].unmarked().0, Value::str("TOK"));
    assert_eq!(c["level"], Value::Number(1.0), "the default");
}

#[test]
fn a_setting_cannot_refer_to_a_resource() {
    let env = Env::new("CFG_TEST_TOKEN_REF");
    let stack = "widget \"a\" {}\nprovider \"cfg\" {\n  region = widget.a.id\n  token = \"t\"\n}\n";
    let d = env.configure(stack, &no_vars()).expect_err("refused");
    assert_eq!(d.0.len(), 1, "{d}");
    assert!(d.0[0].summary.contains("`widget.a`"), "{d}");
    assert_eq!(d.0[0].at.as_ref().map(|l| (l.line, l.col)), Some((3, 12)));
}

#[tokio::test]
async fn a_secret_setting_stays_secret_and_reaches_neither_state_nor_journal_nor_plan() {
    let env = Env::new("CFG_TEST_TOKEN_SECRET");
    let stack = r#"
variable "where" {
  sensitive = true
}
provider "cfg" {
  region = var.where
  token  = "tok-literal-4417"
}
widget "a" { value = "1" }
"#;
    let mut vars = IndexMap::new();
    vars.insert("where".to_string(), Value::str("region-secret-9921"));
    let (p, config, registry) = env.plan(stack, &vars).await;
    {
        let log = env.log.lock().unwrap();
        let c = &log.configs[0];
        assert!(c["region"].is_sensitive(), "from a sensitive variable");
        assert!(
            c["token"].is_sensitive(),
            "declared sensitive by the schema"
        );
        assert!(!c["level"].is_sensitive());
    }
    let plan_json = serde_json::to_string(&p).expect("plan serialises");
    assert!(!plan_json.contains("tok-literal-4417"));
    let events = env.apply_plan(&p, &config, &registry).await;
    let shown = format!("{events:?}");
    assert!(!shown.contains("tok-literal-4417") && !shown.contains("region-secret-9921"));
    let journals = env.log.lock().unwrap().journals.clone();
    assert_eq!(journals.len(), 1);
    assert!(
        journals[0].contains("widget.a"),
        "the pending line was journaled: {journals:?}"
    );
    assert!(!journals[0].contains("tok-literal-4417"));
    assert!(!journals[0].contains("region-secret-9921"));
    let files = env.state_files();
    assert!(files.contains("widget.a"));
    assert!(!files.contains("tok-literal-4417"));
    assert!(!files.contains("region-secret-9921"));
}

#[tokio::test]
async fn a_token_the_block_omits_comes_from_the_environment_and_is_not_recorded() {
    const VAR: &str = "CFG_TEST_TOKEN_FROM_ENV";
    // This test alone reads this variable.
    std::env::set_var(VAR, "env-token-5512");
    let env = Env::new(VAR);
    let stack = "provider \"cfg\" { region = \"home\" }\nwidget \"a\" { value = \"1\" }\n";
    let (p, _) = env.apply(stack, &no_vars()).await;
    assert_eq!(served(&env.events(), "apply", "widget.a"), vec!["home"]);
    assert!(!serde_json::to_string(&p)
        .unwrap()
        .contains("env-token-5512"));
    assert!(!env.state_files().contains("env-token-5512"));
    std::env::remove_var(VAR);
}

#[tokio::test]
async fn a_saved_plan_holds_no_setting_and_its_apply_configures_again() {
    let env = Env::new("CFG_TEST_TOKEN_SAVED");
    let (p, _, _) = env.plan(TWO, &no_vars()).await;
    let saved = serde_json::to_string(&p).expect("plan serialises");
    for secret in ["t-home", "t-west"] {
        assert!(!saved.contains(secret), "{secret} in the saved plan");
    }
    let before = env
        .events()
        .iter()
        .filter(|(o, _)| o == "configure")
        .count();
    // The apply of a saved plan is a run of its own: the stack configures again.
    let p: Plan = serde_json::from_str(&saved).expect("plan reads back");
    let (config, registry) = env.configure(TWO, &p.variables).expect("configures");
    env.apply_plan(&p, &config, &registry).await;
    let ev = env.events();
    assert_eq!(
        ev.iter().filter(|(o, _)| o == "configure").count(),
        before + 2
    );
    assert_eq!(served(&ev, "apply", "widget.b"), vec!["west"]);
}

#[tokio::test]
async fn a_record_whose_configuration_was_removed_is_an_error_naming_it() {
    let env = Env::new("CFG_TEST_TOKEN_REMOVED");
    env.apply(TWO, &no_vars()).await;
    let only_home = "provider \"cfg\" {\n  region = \"home\"\n  token = \"t\"\n}\nwidget \"a\" { value = \"1\" }\n";
    let d = env.configure(only_home, &no_vars()).expect_err("refused");
    let text = d.to_string();
    assert_eq!(d.0.len(), 1, "{text}");
    assert!(
        d.0[0].summary.ends_with(
            "is managed by provider \"cfg\" (alias \"west\"), which the stack no longer configures"
        ),
        "{text}"
    );
    assert!(
        text.contains("provider \"cfg\" { alias = \"west\" ... }"),
        "{text}"
    );
}

#[test]
fn a_provider_without_a_block_gets_its_defaults_and_unused_ones_are_not_configured() {
    let env = Env::new("CFG_TEST_TOKEN_PLAIN");
    env.configure("gadget \"g\" {}\n", &no_vars())
        .expect("configures");
    let plain = env.plain.lock().unwrap();
    assert_eq!(plain.configs.len(), 1);
    assert_eq!(plain.configs[0]["mode"], Value::str("fast"));
    assert!(
        env.events().is_empty(),
        "cfg is used by nothing: not configured"
    );
}

#[test]
fn provider_blocks_in_a_module_are_refused() {
    let env = Env::new("CFG_TEST_TOKEN_MODULE");
    let m = env.dir.path().join("m");
    std::fs::create_dir(&m).unwrap();
    std::fs::write(m.join("main.hcl"), "provider \"cfg\" { region = \"x\" }\n").unwrap();
    let d = env
        .load("module \"m\" { source = \"./m\" }\n")
        .expect_err("refused");
    assert_eq!(
        d.0[0].summary,
        "provider \"cfg\" is configured inside a module"
    );
    assert!(Path::new(&d.0[0].at.as_ref().unwrap().file).ends_with("m/main.hcl"));
}

#[tokio::test]
async fn resources_in_modules_select_the_root_configurations() {
    let env = Env::new("CFG_TEST_TOKEN_IN_MODULE");
    let m = env.dir.path().join("m");
    std::fs::create_dir(&m).unwrap();
    std::fs::write(
        m.join("main.hcl"),
        "widget \"w\" {\n  provider = cfg.west\n}\nwidget \"h\" {}\n",
    )
    .unwrap();
    let stack = r#"
provider "cfg" {
  region = "home"
  token  = "t"
}
provider "cfg" {
  alias  = "west"
  region = "west"
  token  = "t"
}
module "m" { source = "./m" }
"#;
    env.apply(stack, &no_vars()).await;
    let ev = env.events();
    assert_eq!(served(&ev, "apply", "module.m.widget.w"), vec!["west"]);
    assert_eq!(served(&ev, "apply", "module.m.widget.h"), vec!["home"]);
    assert_eq!(
        env.state().resources["module.m.widget.w"].provider,
        "cfg.west"
    );
}
