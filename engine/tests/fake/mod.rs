//! An in-memory provider for engine tests: no processes, no files. It records every call (with
//! the deadline its step carried), and can be told per address to fail with a given kind N
//! times, to hang until its step is cancelled or past its deadline, to stall ignoring its step,
//! and to report drift; plus a harness that plans and applies a stack string through the
//! public API.
#![allow(dead_code)]

use async_trait::async_trait;
use pipeline_engine::apply::{self, ApplyOptions, ApplyReport, Event, RetryPolicy};
use pipeline_engine::config;
use pipeline_engine::graph::ConfigGraph;
use pipeline_engine::plan::{self, Plan, PlanOptions};
use pipeline_engine::provider::{
    ApplyRequest, AttrSchema, ErrorKind, JsonMap, KindSchema, PlanRequest, Planned, Provider,
    ProviderCtx, ProviderError, Registry, Rollout, Step, Timeouts, Type,
};
use pipeline_engine::state::{JournalEntry, ResourceState, State, StateStore, Status};
use pipeline_engine::value::{Value, ValueMap};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One call the engine made: which method, for which address.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub op: &'static str,
    pub addr: String,
    /// The limit of the step's deadline (None: unbounded; `read` has none).
    pub limit: Option<Duration>,
}

#[derive(Default)]
pub struct Fake {
    pub calls: Mutex<Vec<Call>>,
    /// Per address: how the next calls that change the world end (None: they succeed), in order.
    failures: Mutex<HashMap<String, VecDeque<Option<ErrorKind>>>>,
    hang: Mutex<HashSet<String>>,
    /// Addresses whose calls never return and ignore their step (only the engine stops them).
    stall: Mutex<HashSet<String>>,
    /// Addresses whose calls wait until `open` (or their step stops them).
    gated: Mutex<HashSet<String>>,
    pub open: AtomicBool,
    defaults: Mutex<Timeouts>,
    /// Per address: what `read` answers instead of the record (None: gone).
    drift: Mutex<HashMap<String, Option<JsonMap>>>,
    rollout: Mutex<Option<Rollout>>,
    /// The apply's cancel flag (Ctrl-C); a hanging call waits for its step, which the engine
    /// cancels once this is set and the grace is over.
    pub cancel: Arc<AtomicBool>,
    inflight: AtomicUsize,
    pub max_inflight: AtomicUsize,
    serial: AtomicUsize,
    /// Per address: what a failing apply says exists now (`ProviderError::partial`).
    pub partial: Mutex<HashMap<String, JsonMap>>,
}

impl Fake {
    /// The next `times` world-changing calls for `addr` fail with `kind`.
    pub fn fail(&self, addr: &str, kind: ErrorKind, times: usize) {
        let mut f = self.failures.lock().unwrap();
        let q = f.entry(addr.to_string()).or_default();
        q.extend(std::iter::repeat_n(Some(kind), times));
    }
    /// The next `times` world-changing calls for `addr` succeed (before failures queued after).
    pub fn pass(&self, addr: &str, times: usize) {
        let mut f = self.failures.lock().unwrap();
        let q = f.entry(addr.to_string()).or_default();
        q.extend(std::iter::repeat_n(None, times));
    }
    pub fn hang(&self, addr: &str) {
        self.hang.lock().unwrap().insert(addr.to_string());
    }
    /// Calls for `addr` end normally again (no more hanging, stalling or gate).
    pub fn release(&self, addr: &str) {
        self.hang.lock().unwrap().remove(addr);
        self.stall.lock().unwrap().remove(addr);
        self.gated.lock().unwrap().remove(addr);
    }
    /// Calls for `addr` wait until `open` is set, then succeed (unless their step stops first).
    pub fn gate(&self, addr: &str) {
        self.gated.lock().unwrap().insert(addr.to_string());
    }
    /// Calls for `addr` never return and ignore cancel and deadline.
    pub fn stall(&self, addr: &str) {
        self.stall.lock().unwrap().insert(addr.to_string());
    }
    /// The provider's default timeouts for every kind.
    pub fn set_default_timeouts(&self, t: Timeouts) {
        *self.defaults.lock().unwrap() = t;
    }
    /// The deadline limits the steps of `op` on `addr` carried, in call order.
    pub fn limits(&self, op: &str, addr: &str) -> Vec<Option<Duration>> {
        self.calls()
            .into_iter()
            .filter(|c| c.op == op && c.addr == addr)
            .map(|c| c.limit)
            .collect()
    }
    pub fn drift(&self, addr: &str, now: Option<JsonMap>) {
        self.drift.lock().unwrap().insert(addr.to_string(), now);
    }
    pub fn set_rollout(&self, r: Option<Rollout>) {
        *self.rollout.lock().unwrap() = r;
    }
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    /// Calls of `op` (or every world-changing one for "*"), as addresses in call order.
    pub fn ops(&self, op: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.op == op || (op == "*" && c.op != "read"))
            .map(|c| c.addr)
            .collect()
    }
    pub fn count(&self, op: &str, addr: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.op == op && c.addr == addr)
            .count()
    }

    /// Record the call; fail or hang when told to. Yields so that concurrent steps interleave.
    async fn enter(&self, op: &'static str, addr: &str, step: &Step) -> Result<(), ProviderError> {
        self.calls.lock().unwrap().push(Call {
            op,
            addr: addr.to_string(),
            limit: step.deadline.map(|d| d.limit),
        });
        let now = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_inflight.fetch_max(now, Ordering::SeqCst);
        let r = self.step(addr, step).await;
        self.inflight.fetch_sub(1, Ordering::SeqCst);
        r
    }

    async fn step(&self, addr: &str, step: &Step) -> Result<(), ProviderError> {
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        if self.stall.lock().unwrap().contains(addr) {
            std::future::pending::<()>().await;
        }
        if self.gated.lock().unwrap().contains(addr) {
            while !self.open.load(Ordering::SeqCst) {
                step.sleep(Duration::from_millis(5)).await?;
            }
        }
        if self.hang.lock().unwrap().contains(addr) {
            // Cooperative: ends when the step is cancelled or past its deadline.
            let why = step.stop().await;
            return Err(step.error(why));
        }
        let kind = self
            .failures
            .lock()
            .unwrap()
            .get_mut(addr)
            .and_then(VecDeque::pop_front)
            .flatten();
        match kind {
            Some(k) => Err(
                ProviderError::new(format!("{addr}: told to fail ({})", k.name()))
                    .with_kind(k)
                    .help("the fake provider was told to"),
            ),
            None => Ok(()),
        }
    }

    fn object(&self, config: &ValueMap, prior: Option<&JsonMap>) -> JsonMap {
        let mut out: JsonMap = config
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect();
        let id = prior.and_then(|p| p.get("id").cloned()).unwrap_or_else(|| {
            serde_json::json!(format!("id-{}", self.serial.fetch_add(1, Ordering::SeqCst)))
        });
        out.insert("id".into(), id);
        out
    }
}

#[async_trait]
impl Provider for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn kinds(&self) -> Vec<KindSchema> {
        vec![KindSchema {
            kind: "thing",
            attrs: vec![
                AttrSchema::optional("value", Type::String),
                AttrSchema::optional("size", Type::String).force_new(),
                AttrSchema::optional("input", Type::Any),
                AttrSchema::computed("id", Type::String),
            ],
            instances_attr: None,
        }]
    }
    fn plan(&self, _ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
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
        self.calls.lock().unwrap().push(Call {
            op: "read",
            addr: addr.to_string(),
            limit: None,
        });
        Ok(match self.drift.lock().unwrap().get(addr) {
            Some(now) => now.clone(),
            None => Some(prior.clone()),
        })
    }
    /// A dry run on one machine, "box": the value before and after as a diff; a `value` of
    /// "unreachable" fails as a dead host would.
    async fn preview(
        &self,
        _ctx: &ProviderCtx,
        req: &PlanRequest<'_>,
    ) -> Result<Vec<pipeline_engine::provider::TargetPreview>, ProviderError> {
        self.calls.lock().unwrap().push(Call {
            op: "preview",
            addr: req.addr.to_string(),
            limit: None,
        });
        let after = req
            .config
            .get("value")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if after == "unreachable" {
            return Err(ProviderError::unreachable(
                "box (10.0.0.1:22) is unreachable",
            ));
        }
        let before = req
            .prior
            .and_then(|p| p.get("value"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        Ok(vec![pipeline_engine::provider::TargetPreview {
            target: "box".into(),
            summary: "1 changed".into(),
            diff: format!("-{before}\n+{after}"),
        }])
    }
    async fn apply(
        &self,
        _ctx: &ProviderCtx,
        req: &ApplyRequest<'_>,
        step: &Step,
    ) -> Result<JsonMap, ProviderError> {
        if let Err(e) = self.enter("apply", req.addr, step).await {
            return Err(match self.partial.lock().unwrap().get(req.addr) {
                Some(now) => e.partial(now.clone()),
                None => e,
            });
        }
        Ok(self.object(req.config, req.prior))
    }
    fn rollout(&self, _kind: &str, _config: &ValueMap) -> Option<Rollout> {
        self.rollout.lock().unwrap().clone()
    }
    async fn stage(
        &self,
        _ctx: &ProviderCtx,
        req: &ApplyRequest<'_>,
        step: &Step,
    ) -> Result<JsonMap, ProviderError> {
        self.enter("stage", req.addr, step).await?;
        Ok(self.object(req.config, req.prior))
    }
    async fn commit(
        &self,
        _ctx: &ProviderCtx,
        _kind: &str,
        addr: &str,
        staged: &JsonMap,
        step: &Step,
    ) -> Result<JsonMap, ProviderError> {
        self.enter("commit", addr, step).await?;
        Ok(staged.clone())
    }
    async fn abort(
        &self,
        _ctx: &ProviderCtx,
        _kind: &str,
        addr: &str,
        _staged: &JsonMap,
        step: &Step,
    ) -> Result<(), ProviderError> {
        self.calls.lock().unwrap().push(Call {
            op: "abort",
            addr: addr.to_string(),
            limit: step.deadline.map(|d| d.limit),
        });
        Ok(())
    }
    async fn delete(
        &self,
        _ctx: &ProviderCtx,
        _kind: &str,
        addr: &str,
        _prior: &JsonMap,
        step: &Step,
    ) -> Result<(), ProviderError> {
        self.enter("delete", addr, step).await
    }
    fn default_timeouts(&self, _kind: &str) -> Timeouts {
        *self.defaults.lock().unwrap()
    }
}

/// A working directory, the fake, and plan/apply through the engine's public API.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub fake: Arc<Fake>,
    pub registry: Registry,
    pub retry: RetryPolicy,
    pub parallelism: usize,
    /// How long running steps may go on after a cancel (tests: none).
    pub grace: Duration,
}

impl Env {
    pub fn new() -> Env {
        let fake = Arc::new(Fake::default());
        let mut registry = Registry::default();
        registry.add(fake.clone());
        Env {
            dir: tempfile::tempdir().expect("temp dir"),
            fake,
            registry,
            // Tests wait a millisecond, not the default 200 ms.
            retry: RetryPolicy {
                base: Duration::from_millis(1),
                ..RetryPolicy::default()
            },
            parallelism: 4,
            grace: Duration::ZERO,
        }
    }
    pub fn state_dir(&self) -> std::path::PathBuf {
        self.dir.path().join(".pipeline")
    }
    pub fn ctx(&self) -> ProviderCtx {
        ProviderCtx {
            work_dir: self.state_dir(),
            stack_dir: self.dir.path().to_path_buf(),
            exe: "/nonexistent/pipeline".into(),
        }
    }
    pub fn state(&self) -> State {
        StateStore::load(&self.state_dir()).expect("state loads")
    }
    pub fn status(&self, addr: &str) -> Option<Status> {
        self.state().resources.get(addr).map(|r| r.status)
    }
    pub fn attr(&self, addr: &str, name: &str) -> Option<serde_json::Value> {
        self.state().resources.get(addr)?.attrs.get(name).cloned()
    }
    /// Write a record as a crashed run would have left it.
    pub fn record(&self, addr: &str, status: Status, attrs: serde_json::Value) {
        let mut store = StateStore::open(&self.state_dir()).expect("state opens");
        let attrs = attrs.as_object().cloned().unwrap_or_default();
        store
            .record(JournalEntry::Set {
                addr: addr.to_string(),
                resource: ResourceState {
                    kind: "thing".into(),
                    provider: "fake".into(),
                    status,
                    attrs,
                    sensitive: vec![],
                    deps: vec![],
                },
            })
            .expect("recorded");
    }

    /// Load `stack` as the stack file: the config, or the diagnostics as text.
    pub fn load(&self, stack: &str) -> Result<config::Config, String> {
        let path = self.dir.path().join("stack.hcl");
        std::fs::write(&path, stack).expect("stack written");
        config::load(&path, &self.registry).map_err(|d| d.to_string())
    }

    pub async fn plan(&self, stack: &str) -> (Plan, config::Config) {
        let config = self.load(stack).expect("stack loads");
        let graph = ConfigGraph::build(&config).expect("graph builds");
        let state = self.state();
        let ctx = self.ctx();
        let refreshed = plan::refresh(&self.registry, &ctx, &state, 4)
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
            &self.registry,
            &ctx,
            &state,
            Some(&refreshed),
            &opts,
        )
        .expect("plan");
        (p, config)
    }

    /// Plan and apply `stack`; returns the plan, the report and every event.
    pub async fn apply(&self, stack: &str) -> (Plan, ApplyReport, Vec<Event>) {
        let (p, config) = self.plan(stack).await;
        let (report, events) = self.apply_plan(&p, &config).await;
        (p, report, events)
    }

    pub async fn apply_plan(&self, p: &Plan, config: &config::Config) -> (ApplyReport, Vec<Event>) {
        let mut store = StateStore::open(&self.state_dir()).expect("state opens");
        let mut events = Vec::new();
        let cancel = self.fake.cancel.clone();
        let mut on_event = |e: &Event| events.push(e.clone());
        let report = apply::apply(
            config,
            &self.registry,
            &self.ctx(),
            &mut store,
            p,
            &ApplyOptions {
                parallelism: self.parallelism,
                cancel,
                grace: self.grace,
                retry: self.retry.clone(),
            },
            &mut on_event,
        )
        .await
        .expect("apply runs");
        (report, events)
    }
}

/// The action planned for `addr`, and why.
pub fn action(p: &Plan, addr: &str) -> (plan::Action, Option<String>) {
    let c = p
        .changes
        .iter()
        .find(|c| c.addr == addr)
        .unwrap_or_else(|| panic!("{addr} is not in the plan"));
    (c.action, c.reason.clone())
}

/// The retries reported for `addr`: (attempt, of, kind, delay).
pub fn retries(events: &[Event], addr: &str) -> Vec<(u32, u32, ErrorKind, Duration)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Retrying {
                addr: a,
                attempt,
                of,
                kind,
                delay,
                ..
            } if a == addr => Some((*attempt, *of, *kind, *delay)),
            _ => None,
        })
        .collect()
}
