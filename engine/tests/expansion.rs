//! Blocks a provider expands into instances (`Provider::expansion`/`expand`: an inventory
//! group into its hosts), over an in-memory provider: keys and order, `each.value`,
//! references to the block as a map, and the errors (with `count`/`for_each`, a value known
//! only after apply, the provider's refusal at the attribute).

mod fake;

use async_trait::async_trait;
use fake::{action, Env};
use pipeline_engine::graph::ConfigGraph;
use pipeline_engine::plan::{self, Action, PlanOptions};
use pipeline_engine::provider::{
    ApplyRequest, AttrSchema, JsonMap, KindSchema, PlanRequest, Planned, Provider, ProviderCtx,
    ProviderError, Step, Type,
};
use pipeline_engine::value::{Value, ValueMap};
use serde_json::json;
use std::sync::Arc;

/// `member "m" { provider = pool  members = ["a", "b"] }`: one instance per member, in the
/// order given, `each.value` = `{ name = "a" }`; a member named "missing" is refused.
struct Pool;

#[async_trait]
impl Provider for Pool {
    fn name(&self) -> &'static str {
        "pool"
    }
    fn kinds(&self) -> Vec<KindSchema> {
        vec![KindSchema {
            kind: "member",
            attrs: vec![
                AttrSchema::required("members", Type::List(Box::new(Type::String))),
                AttrSchema::optional("label", Type::String),
                AttrSchema::computed("id", Type::String).derived_from(&[]),
            ],
            instances_attr: None,
        }]
    }
    fn expansion(&self, kind: &str) -> Option<&'static str> {
        (kind == "member").then_some("members")
    }
    fn expand(&self, _kind: &str, value: &Value) -> Result<Vec<(String, Value)>, ProviderError> {
        let Value::List(l) = value.unmarked().0 else {
            return Err(ProviderError::new("members must be a list"));
        };
        l.into_iter()
            .map(|v| match v {
                Value::String(s) if s == "missing" => Err(ProviderError::invalid_config(
                    "the pool has no member 'missing'",
                )
                .help("its members are a, b, c")),
                Value::String(s) => {
                    let mut m = ValueMap::new();
                    m.insert("name".into(), Value::str(&s));
                    Ok((s, Value::Map(m)))
                }
                _ => Err(ProviderError::new("members are strings")),
            })
            .collect()
    }
    fn plan(&self, _ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
        Ok(Planned {
            object: with_id(req.config),
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
        Ok(with_id(req.config)
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
        _step: &Step,
    ) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// The config with its computed `id`.
fn with_id(config: &ValueMap) -> ValueMap {
    let mut object = config.clone();
    let label = config
        .get("label")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    object.insert("id".into(), Value::str(format!("id-{label}")));
    object
}

fn env() -> Env {
    let mut env = Env::new();
    env.registry.add(Arc::new(Pool));
    env
}

/// The plan's diagnostics for `stack`, as text.
fn plan_error(env: &Env, stack: &str) -> String {
    let config = env.load(stack).expect("stack loads");
    let graph = ConfigGraph::build(&config).expect("graph builds");
    let ctx = ProviderCtx {
        work_dir: env.state_dir(),
        stack_dir: env.dir.path().to_path_buf(),
        exe: "/nonexistent/pipeline".into(),
    };
    match plan::make_plan(
        &config,
        &graph,
        &env.registry,
        &ctx,
        &env.state(),
        None,
        &PlanOptions::default(),
    ) {
        Ok(_) => panic!("the plan succeeded"),
        Err(d) => d.to_string(),
    }
}

const POOL: &str = r#"
member "m" {
  provider = pool
  members  = ["b", "a", "c"]
  label    = "${each.key}:${each.value.name}"
}
thing "t" { input = member.m["a"].id }
thing "all" { input = [for k, m in member.m : k] }
"#;

#[tokio::test]
async fn a_provider_expanded_block_has_an_instance_per_member_in_its_order() {
    let env = env();
    let (p, config) = env.plan(POOL).await;
    let addrs: Vec<&str> = p
        .changes
        .iter()
        .map(|c| c.addr.as_str())
        .filter(|a| a.starts_with("member."))
        .collect();
    assert_eq!(
        addrs,
        vec![r#"member.m["b"]"#, r#"member.m["a"]"#, r#"member.m["c"]"#]
    );
    assert_eq!(action(&p, r#"member.m["a"]"#).0, Action::Create);
    let (report, _) = env.apply_plan(&p, &config).await;
    assert!(report.ok(), "{report:?}");
    // each.key and each.value reach the instance; the block is a map for references.
    assert_eq!(env.attr(r#"member.m["a"]"#, "label"), Some(json!("a:a")));
    assert_eq!(env.attr("thing.t", "input"), Some(json!("id-a:a")));
    assert_eq!(env.attr("thing.all", "input"), Some(json!(["b", "a", "c"])));
    // The same members again: nothing to do; one fewer: its instance is deleted.
    let (p, _) = env.plan(POOL).await;
    assert!(!p.has_changes());
    let fewer = POOL.replace(r#"["b", "a", "c"]"#, r#"["b", "a"]"#);
    let (p, _) = env.plan(&fewer).await;
    assert_eq!(action(&p, r#"member.m["c"]"#).0, Action::Delete);
    // The others stay (`members`, recorded on each, is an update in place).
    assert_eq!(action(&p, r#"member.m["a"]"#).0, Action::Update);
    assert_eq!(action(&p, "thing.all").0, Action::Update);
}

#[test]
fn count_or_for_each_beside_the_expansion_is_an_error_at_it() {
    let env = env();
    for (meta, line) in [("count = 2", 3), ("for_each = toset([\"x\"])", 3)] {
        let stack =
            format!("member \"m\" {{\n  provider = pool\n  {meta}\n  members = [\"a\"]\n}}\n");
        let e = plan_error(&env, &stack);
        let word = meta.split(' ').next().unwrap();
        assert!(
            e.contains(&format!("`{word}` and `members` both say which instances")),
            "{e}"
        );
        assert!(e.contains(&format!("stack.hcl:{line}:")), "{e}");
    }
}

#[test]
fn a_refused_member_is_an_error_at_the_attribute_with_the_providers_help() {
    let env = env();
    let e = plan_error(
        &env,
        "member \"m\" {\n  provider = pool\n  members = [\"a\", \"missing\"]\n}\n",
    );
    assert!(e.contains("the pool has no member 'missing'"), "{e}");
    assert!(e.contains("stack.hcl:3:13"), "{e}");
    assert!(e.contains("its members are a, b, c"), "{e}");
}

#[test]
fn members_known_only_after_apply_are_an_error() {
    let env = env();
    let e = plan_error(
        &env,
        "thing \"t\" {}\nmember \"m\" {\n  provider = pool\n  members = [thing.t.id]\n}\n",
    );
    assert!(
        e.contains("`members` depends on a value that is known only after apply"),
        "{e}"
    );
    assert!(e.contains("stack.hcl:4:"), "{e}");
}
