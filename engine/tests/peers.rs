//! Providers cooperate through the engine: during its own step a provider runs an action of (or
//! describes) another recorded resource joined to its own in the graph, and the engine routes
//! the call to the provider configuration that recorded that resource, journaling the record an
//! action changes. In-memory providers only; no process is started.
//!
//! `svc` calls its peer during apply (address, action and arguments are its attributes); `lb`
//! has two actions, `weights` (answers what it was given) and `bump` (changes its record), and
//! labels every call with its configuration.

use async_trait::async_trait;
use indexmap::IndexMap;
use pipeline_engine::apply::{self, ApplyOptions, ApplyReport};
use pipeline_engine::config;
use pipeline_engine::configure;
use pipeline_engine::graph::ConfigGraph;
use pipeline_engine::plan::{self, PlanOptions};
use pipeline_engine::provider::{
    ActionOutput, ActionSchema, ApplyRequest, AttrSchema, Description, Endpoint, Invalid, JsonMap,
    KindSchema, PlanRequest, Planned, Provider, ProviderCtx, ProviderError, Registry, Type,
};
use pipeline_engine::state::{State, StateStore};
use pipeline_engine::value::{Value, ValueMap};
use pipeline_engine::Step;
use serde_json::json;
use std::sync::{Arc, Mutex};

type Log = Arc<Mutex<Vec<String>>>;

fn str_attr<'a>(c: &'a ValueMap, k: &str) -> Option<&'a str> {
    c.get(k).and_then(Value::as_str)
}

fn json_of(c: &ValueMap) -> JsonMap {
    c.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()
}

/// The resource whose actions are run: labelled by its configuration (`UNCONFIGURED` for the
/// registered instance, which must never serve a peer's call when a configuration exists).
struct Lb {
    log: Log,
    label: String,
}

#[async_trait]
impl Provider for Lb {
    fn name(&self) -> &'static str {
        "lb"
    }
    fn kinds(&self) -> Vec<KindSchema> {
        vec![KindSchema {
            kind: "lb",
            attrs: vec![
                AttrSchema::optional("value", Type::Any),
                AttrSchema::computed("id", Type::String),
                AttrSchema::computed("count", Type::Number),
            ],
            instances_attr: None,
        }]
    }
    fn config_schema(&self) -> Vec<AttrSchema> {
        vec![AttrSchema::optional("label", Type::String).default(Value::str("default"))]
    }
    fn configure(&self, config: &ValueMap) -> Result<Option<Arc<dyn Provider>>, Vec<Invalid>> {
        Ok(Some(Arc::new(Lb {
            log: self.log.clone(),
            label: str_attr(config, "label").unwrap_or("default").to_string(),
        })))
    }
    fn plan(&self, _ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
        let mut object = req.config.clone();
        for k in ["id", "count"] {
            let v = req
                .prior
                .and_then(|p| p.get(k))
                .map(Value::from_json)
                .unwrap_or(Value::Unknown);
            object.insert(k.into(), v);
        }
        Ok(Planned {
            object,
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
        _step: &Step,
    ) -> Result<JsonMap, ProviderError> {
        let mut out = json_of(req.config);
        out.insert("id".into(), format!("id-{}", req.addr).into());
        let count = req.prior.and_then(|p| p.get("count").cloned());
        out.insert("count".into(), count.unwrap_or(json!(0)));
        Ok(out)
    }
    async fn delete(
        &self,
        _ctx: &ProviderCtx,
        _kind: &str,
        _addr: &str,
        _prior: &JsonMap,
        _step: &Step,
    ) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn describe(
        &self,
        _ctx: &ProviderCtx,
        _kind: &str,
        addr: &str,
        record: &JsonMap,
    ) -> Result<Description, ProviderError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} describe {addr}", self.label));
        Ok(Description {
            endpoints: vec![Endpoint {
                role: "serve".into(),
                url: format!(
                    "lb://{}/{}",
                    self.label,
                    record["id"].as_str().unwrap_or("")
                ),
                ..Default::default()
            }],
            ..Default::default()
        })
    }
    fn actions(&self, _kind: &str) -> Vec<ActionSchema> {
        vec![
            ActionSchema {
                name: "weights",
                about: "answers what it was given",
                args: vec![],
                changes_record: false,
            },
            ActionSchema {
                name: "bump",
                about: "counts one more in the record",
                args: vec![],
                changes_record: true,
            },
        ]
    }
    async fn action(
        &self,
        _ctx: &ProviderCtx,
        _kind: &str,
        addr: &str,
        record: &JsonMap,
        name: &str,
        args: &JsonMap,
    ) -> Result<ActionOutput, ProviderError> {
        self.log.lock().unwrap().push(format!(
            "{} {name} {addr} {} {}",
            self.label,
            record["id"].as_str().unwrap_or(""),
            serde_json::Value::Object(args.clone())
        ));
        let mut out = ActionOutput::output(
            json!({ "label": self.label, "id": record["id"], "args": args })
                .as_object()
                .cloned()
                .unwrap(),
        );
        if name == "bump" {
            let mut r = record.clone();
            let n = r.get("count").and_then(|c| c.as_u64()).unwrap_or(0);
            r.insert("count".into(), json!(n + 1));
            out.record = Some(r);
        }
        Ok(out)
    }
}

/// The resource that calls: during apply it runs `action` (or `describe`) on `target` with
/// `args`, through `step.peers` (from a blocking thread when `blocking`), and records the answer.
struct Svc;

#[async_trait]
impl Provider for Svc {
    fn name(&self) -> &'static str {
        "svc"
    }
    fn kinds(&self) -> Vec<KindSchema> {
        vec![KindSchema {
            kind: "svc",
            attrs: vec![
                AttrSchema::optional("value", Type::String),
                AttrSchema::optional("target", Type::String),
                AttrSchema::optional("action", Type::String),
                AttrSchema::optional("args", Type::Any),
                AttrSchema::optional("via", Type::Any),
                AttrSchema::optional("blocking", Type::Bool),
                AttrSchema::computed("answer", Type::String),
                AttrSchema::computed("url", Type::String),
            ],
            instances_attr: None,
        }]
    }
    fn plan(&self, _ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
        let mut object = req.config.clone();
        object.insert("answer".into(), Value::Unknown);
        object.insert("url".into(), Value::str(format!("svc://{}", req.addr)));
        Ok(Planned {
            object,
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
        step: &Step,
    ) -> Result<JsonMap, ProviderError> {
        let mut out = json_of(req.config);
        out.insert("url".into(), format!("svc://{}", req.addr).into());
        let (Some(target), Some(action)) = (
            str_attr(req.config, "target"),
            str_attr(req.config, "action"),
        ) else {
            out.insert("answer".into(), "".into());
            return Ok(out);
        };
        let args = req
            .config
            .get("args")
            .map(|a| a.to_json())
            .and_then(|a| a.as_object().cloned())
            .unwrap_or_default();
        let blocking = req.config.get("blocking") == Some(&Value::Bool(true));
        let answer = if action == "describe" {
            let d = if blocking {
                let (peers, t) = (step.peers.clone(), target.to_string());
                tokio::task::spawn_blocking(move || peers.describe_blocking(&t))
                    .await
                    .unwrap()?
            } else {
                step.peers.describe(target).await?
            };
            d.endpoint("serve")
                .map(|e| e.url.clone())
                .unwrap_or_default()
        } else {
            let o = if blocking {
                let (peers, t, a) = (step.peers.clone(), target.to_string(), action.to_string());
                tokio::task::spawn_blocking(move || peers.action_blocking(&t, &a, &args))
                    .await
                    .unwrap()?
            } else {
                step.peers.action(target, action, &args).await?
            };
            serde_json::Value::Object(o.output).to_string()
        };
        let peers: Vec<String> = step
            .peers
            .list()
            .await
            .iter()
            .map(|p| format!("{}:{}:{}", p.addr, p.dependency, p.actions.join("+")))
            .collect();
        out.insert("answer".into(), answer.into());
        out.insert("peers".into(), peers.into());
        Ok(out)
    }
    async fn delete(
        &self,
        _ctx: &ProviderCtx,
        _kind: &str,
        _addr: &str,
        _prior: &JsonMap,
        _step: &Step,
    ) -> Result<(), ProviderError> {
        Ok(())
    }
}

struct Env {
    dir: tempfile::TempDir,
    log: Log,
    registry: Registry,
}

impl Env {
    fn new() -> Env {
        let log = Log::default();
        let mut registry = Registry::default();
        registry.add(Arc::new(Svc));
        registry.add(Arc::new(Lb {
            log: log.clone(),
            label: "UNCONFIGURED".into(),
        }));
        Env {
            dir: tempfile::tempdir().expect("temp dir"),
            log,
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
    fn attr(&self, addr: &str, name: &str) -> Option<serde_json::Value> {
        self.state().resources.get(addr)?.attrs.get(name).cloned()
    }
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
    /// One run as the CLI makes it: load, configure, refresh, plan, apply.
    async fn apply(&self, stack: &str) -> ApplyReport {
        let path = self.dir.path().join("stack.hcl");
        std::fs::write(&path, stack).expect("stack written");
        let config = config::load(&path, &self.registry).expect("stack loads");
        let vars = IndexMap::new();
        let registry = configure::configure(&config, &self.registry, &vars, &self.state())
            .expect("configures");
        let graph = ConfigGraph::build(&config).expect("graph builds");
        let state = self.state();
        let refreshed = plan::refresh(&registry, &self.ctx(), &state, 4)
            .await
            .expect("refresh");
        let opts = PlanOptions {
            refresh: true,
            parallelism: 4,
            ..PlanOptions::default()
        };
        let p = plan::make_plan(
            &config,
            &graph,
            &registry,
            &self.ctx(),
            &state,
            Some(&refreshed),
            &opts,
        )
        .expect("plan");
        let mut store = StateStore::open(&self.state_dir()).expect("state opens");
        apply::apply(
            &config,
            &registry,
            &self.ctx(),
            &mut store,
            &p,
            &ApplyOptions {
                parallelism: 4,
                cancel: Default::default(),
                grace: std::time::Duration::ZERO,
                retry: Default::default(),
            },
            &mut |_| {},
        )
        .await
        .expect("apply runs")
    }
}

const TWO_CONFIGS: &str = r#"
provider "lb" { label = "EAST" }
provider "lb" {
  alias = "west"
  label = "WEST"
}
lb "east" { value = "e" }
lb "west" {
  provider = lb.west
  value    = "w"
}
"#;

#[tokio::test]
async fn an_action_goes_to_the_configuration_that_recorded_the_peer_with_its_record() {
    let env = Env::new();
    let stack = format!(
        r#"{TWO_CONFIGS}
svc "a" {{
  via    = lb.west.id
  target = "lb.west"
  action = "weights"
  args   = {{ stable = ["x:1"], canary = ["y:2"], weight = 5 }}
}}
"#
    );
    let report = env.apply(&stack).await;
    assert!(report.ok(), "{report:?}");
    let calls: Vec<String> = env
        .log()
        .into_iter()
        .filter(|l| l.contains("weights"))
        .collect();
    assert_eq!(
        calls,
        vec![r#"WEST weights lb.west id-lb.west {"stable":["x:1"],"canary":["y:2"],"weight":5}"#],
        "one call, by the `west` configuration, with lb.west's record"
    );
    let answer: serde_json::Value =
        serde_json::from_str(env.attr("svc.a", "answer").unwrap().as_str().unwrap()).unwrap();
    assert_eq!(answer["label"], "WEST");
    assert_eq!(answer["id"], "id-lb.west");
    // Only lb.west is joined to svc.a; lb.east is not a peer.
    assert_eq!(
        env.attr("svc.a", "peers"),
        Some(json!(["lb.west:true:weights+bump"]))
    );
}

#[tokio::test]
async fn describe_goes_to_the_peers_configuration_also_from_a_blocking_thread() {
    let env = Env::new();
    for blocking in [false, true] {
        let stack = format!(
            r#"{TWO_CONFIGS}
svc "d" {{
  via      = lb.east.id
  target   = "lb.east"
  action   = "describe"
  value    = "{blocking}"
  blocking = {blocking}
}}
"#
        );
        let report = env.apply(&stack).await;
        assert!(report.ok(), "{report:?}");
        assert_eq!(
            env.attr("svc.d", "answer"),
            Some(json!("lb://EAST/id-lb.east")),
            "blocking: {blocking}"
        );
    }
    assert_eq!(
        env.log()
            .iter()
            .filter(|l| l.contains("describe"))
            .collect::<Vec<_>>(),
        vec!["EAST describe lb.east", "EAST describe lb.east"]
    );
}

#[tokio::test]
async fn an_address_the_graph_does_not_join_is_refused_and_its_provider_not_called() {
    let env = Env::new();
    let stack = format!(
        r#"{TWO_CONFIGS}
svc "a" {{
  via    = lb.west.id
  target = "lb.east"
  action = "bump"
}}
"#
    );
    let report = env.apply(&stack).await;
    let failure = report
        .failed
        .iter()
        .find(|f| f.addr == "svc.a")
        .cloned()
        .expect("svc.a failed");
    let (addr, error) = (failure.addr, failure.error.to_string());
    assert_eq!(addr, "svc.a");
    assert!(
        error.contains(
            "cannot address lb.east: svc.a does not depend on it, nor does it depend on svc.a"
        ),
        "{error}"
    );
    assert!(
        env.log().iter().all(|l| !l.contains("bump")),
        "{:?}",
        env.log()
    );
    assert_eq!(env.attr("lb.east", "count"), Some(json!(0)), "unchanged");
}

#[tokio::test]
async fn an_action_the_peer_does_not_have_is_refused_naming_those_it_has() {
    let env = Env::new();
    let stack = format!(
        r#"{TWO_CONFIGS}
svc "a" {{
  via    = lb.east.id
  target = "lb.east"
  action = "split"
}}
"#
    );
    let report = env.apply(&stack).await;
    let error = &report.failed.first().expect("failed").error.to_string();
    assert!(
        error.contains("the lb provider has no action `split` for lb")
            && error.contains("weights, bump"),
        "{error}"
    );
}

#[tokio::test]
async fn a_record_changing_action_is_journaled_and_a_plain_one_is_not() {
    let env = Env::new();
    let stack = |action: &str, value: &str| {
        format!(
            r#"{TWO_CONFIGS}
svc "a" {{
  via    = lb.east.id
  target = "lb.east"
  action = "{action}"
  value  = "{value}"
}}
"#
        )
    };
    assert!(env.apply(&stack("bump", "1")).await.ok());
    assert_eq!(env.attr("lb.east", "count"), Some(json!(1)));
    assert!(env.apply(&stack("bump", "2")).await.ok());
    assert_eq!(
        env.attr("lb.east", "count"),
        Some(json!(2)),
        "from the record"
    );
    assert!(env.apply(&stack("weights", "3")).await.ok());
    assert_eq!(env.attr("lb.east", "count"), Some(json!(2)));
    // The record changed by the action is the state's: nothing else of it was lost.
    assert_eq!(env.attr("lb.east", "value"), Some(json!("e")));
    assert_eq!(env.state().resources["lb.east"].provider, "lb");
}

/// As a service's canary asks the balancer in front of it: the balancer references the service
/// (it depends on it), and the service's update addresses the balancer.
#[tokio::test]
async fn a_dependent_in_front_can_be_addressed_by_what_it_routes_to() {
    let env = Env::new();
    let stack = |version: &str| {
        format!(
            r#"
svc "web" {{
  value  = "{version}"
  target = "lb.front"
  action = "bump"
}}
lb "front" {{ value = svc.web.url }}
"#
        )
    };
    // Created first (the balancer waits for it): nothing to address yet.
    let report = env.apply(&stack("v1")).await;
    let error = &report.failed.first().expect("failed").error.to_string();
    assert!(error.contains("lb.front is not recorded"), "{error}");
    let report = env
        .apply(
            r#"
svc "web" { value = "v1" }
lb "front" { value = svc.web.url }
"#,
        )
        .await;
    assert!(report.ok(), "{report:?}");
    let report = env.apply(&stack("v2")).await;
    assert!(report.ok(), "{report:?}");
    assert_eq!(env.attr("lb.front", "count"), Some(json!(1)));
    assert_eq!(
        env.attr("svc.web", "peers"),
        Some(json!(["lb.front:false:weights+bump"]))
    );
}
