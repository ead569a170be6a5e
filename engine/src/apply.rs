//! Apply: a ready-queue scheduler over the plan's instances. Independent instances run
//! concurrently (bounded); a failure stops only what depends on it; every finished step is
//! journaled before the next decision, so a kill at any moment loses nothing.

use crate::config::Config;
use crate::diag::{Diagnostic, Diagnostics};
use crate::plan::{
    eval_attrs, instance_scope, resource_addr, state_outputs, Action, Plan, ResourceChange,
};
use crate::provider::{
    Aborted, ApplyRequest, ArtifactKind, Cause, ErrorKind, JsonMap, Note, Progress, ProviderCtx,
    ProviderError, Registry, Staged,
};
use crate::step::{CancelToken, Op, Step, Stop, Timeouts};
use crate::value::{Value, ValueMap};
use crate::world::{Expansion, World};
use pipeline_state::{JournalEntry, ResourceState, StateStore, Status};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Started {
        addr: String,
        action: Action,
    },
    Finished {
        addr: String,
        action: Action,
        elapsed: Duration,
    },
    Failed {
        addr: String,
        action: Action,
        error: String,
    },
    Skipped {
        addr: String,
        reason: String,
    },
    /// A rollout stopped and this instance went back to what it ran before.
    RolledBack {
        addr: String,
    },
    /// A line of live progress from a long step (a canary's steps), about a block.
    Progress {
        addr: String,
        message: String,
    },
    /// A long step wrote a file the caller may render (a progressive canary's evidence).
    Artifact {
        addr: String,
        kind: ArtifactKind,
        path: std::path::PathBuf,
    },
    /// A provider call failed with a retryable error; attempt `attempt` of `of` starts after `delay`.
    Retrying {
        addr: String,
        attempt: u32,
        of: u32,
        kind: ErrorKind,
        delay: Duration,
        error: String,
    },
}

/// One instance whose step failed: the provider's error itself (its kind and cause), not its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub addr: String,
    pub action: Action,
    pub error: ProviderError,
}

#[derive(Debug, Default)]
pub struct ApplyReport {
    pub succeeded: Vec<(String, Action)>,
    pub failed: Vec<Failure>,
    pub skipped: Vec<(String, String)>,
    /// Instances a stopped rollout returned to their previous version.
    pub rolled_back: Vec<String>,
    pub interrupted: bool,
}

impl ApplyReport {
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.skipped.is_empty() && !self.interrupted
    }
}

pub struct ApplyOptions {
    pub parallelism: usize,
    /// Set (by Ctrl-C) to start nothing new; running steps get `grace` to finish and are
    /// recorded, then their `Step` is cancelled.
    pub cancel: Arc<AtomicBool>,
    /// How long running steps may go on after `cancel` before they are told to stop.
    pub grace: Duration,
    /// How throttled and transient provider errors are retried.
    pub retry: RetryPolicy,
}

/// Bounded exponential backoff with jitter for provider calls that change the world.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Calls in all, the first included (1: never retry).
    pub attempts: u32,
    /// Wait before the second attempt; each further wait is `factor` times longer, up to `cap`.
    pub base: Duration,
    pub factor: u32,
    pub cap: Duration,
    /// A throttled error waits this many times longer than a transient one.
    pub throttled_factor: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base: Duration::from_millis(200),
            factor: 2,
            cap: Duration::from_secs(5),
            throttled_factor: 4,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `failed` (1 = the first call) with an error of `kind`;
    /// `jitter` in [0, 1) picks a point in the upper half of the backoff ("equal jitter"), so
    /// a throttled wait is always longer than the transient one of the same attempt.
    pub fn delay(&self, kind: ErrorKind, failed: u32, jitter: f64) -> Duration {
        let exp = self
            .factor
            .max(1)
            .saturating_pow(failed.saturating_sub(1).min(30));
        let mult = if kind == ErrorKind::Throttled {
            exp.saturating_mul(self.throttled_factor.max(1))
        } else {
            exp
        };
        let full = self.base.saturating_mul(mult).min(self.cap);
        full / 2 + full.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
    }
}

enum Outcome {
    Applied(JsonMap),
    Deleted,
    /// Phase one of a two-phase update: prepared, not switched.
    Staged(JsonMap),
    Aborted,
    /// A progressive group's analysis is over: promote (Ok) or abort.
    Analyzed(Result<(), Aborted>),
}

/// What a spawned step does.
#[derive(Clone)]
enum Phase {
    Normal,
    Stage,
    Commit(JsonMap),
    Abort(JsonMap),
    /// Progressive groups: the provider shifts traffic and judges, between stage and commit.
    Analyze {
        block: String,
        config: ValueMap,
        members: Vec<Staged>,
        progress: Progress,
    },
}

/// Instances of one block updated under a rollout policy.
struct Group {
    members: Vec<usize>,
    two_phase: bool,
    /// Two-phase: members that have staged or failed so far, what they staged, the first failure.
    reported: usize,
    staged: Vec<(usize, JsonMap)>,
    failed: Option<String>,
    /// Progressive (canary): analysed between staging and switching.
    progressive: bool,
    /// Progressive: the block's evaluated config and each member's recorded attributes.
    config: Option<ValueMap>,
    priors: HashMap<usize, JsonMap>,
    /// Progressive: staged members waiting for the analysis, and its verdict once known.
    analysing: Vec<(usize, JsonMap)>,
    verdict: Option<Result<(), Aborted>>,
}

/// Errors here are about the engine itself (state not writable); resource failures are in the report.
pub async fn apply(
    config: &Config,
    registry: &Registry,
    ctx: &ProviderCtx,
    store: &mut StateStore,
    plan: &Plan,
    opts: &ApplyOptions,
    on_event: &mut dyn FnMut(&Event),
) -> Result<ApplyReport, Diagnostics> {
    let world = World::new(config, plan.variables.clone());
    // References see recorded values, overridden by planned ones until each is applied.
    let mut exp_of: HashMap<(usize, String), Expansion> = HashMap::new();
    for (m, key, exp) in &plan.expansions {
        exp_of.insert((*m, key.clone()), exp.clone());
        world.set_expansion(*m, key, exp);
        for inst in exp.keys() {
            let addr = crate::world::instance_addr(&config.modules[*m].prefix, key, &inst);
            let v = match store.state().resources.get(&addr) {
                Some(rs) => state_value(registry, rs),
                None => Value::Unknown,
            };
            world.set_instance(*m, key, exp, inst, v);
        }
    }
    for c in &plan.changes {
        if let (Some(m), Some(after)) = (c.module, &c.after) {
            if c.action != Action::NoOp {
                world.set_instance(
                    m,
                    &c.resource,
                    &exp_of[&(m, c.resource.clone())],
                    c.key.clone(),
                    Value::Map(after.clone()),
                );
            }
        }
    }

    let n = plan.changes.len();

    let mut waits: Vec<HashSet<usize>> = vec![HashSet::new(); n];
    // Dependencies name blocks (older states name instances): index both ways by block.
    let mut by_resource: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut dependents_of: HashMap<&str, Vec<usize>> = HashMap::new();
    for (j, e) in plan.changes.iter().enumerate() {
        by_resource
            .entry(resource_addr(&e.addr))
            .or_default()
            .push(j);
        if e.action == Action::NoOp {
            continue;
        }
        let recorded = store
            .state()
            .resources
            .get(&e.addr)
            .map(|r| r.deps.as_slice())
            .unwrap_or_default();
        for d in e.deps.iter().chain(recorded) {
            dependents_of.entry(resource_addr(d)).or_default().push(j);
        }
    }
    for (i, c) in plan.changes.iter().enumerate() {
        if c.action == Action::Delete {
            // Whatever depended on it changes or goes first.
            for &j in dependents_of
                .get(resource_addr(&c.addr))
                .into_iter()
                .flatten()
            {
                if j != i {
                    waits[i].insert(j);
                }
            }
        } else {
            for d in &c.deps {
                for &j in by_resource.get(resource_addr(d)).into_iter().flatten() {
                    if plan.changes[j].action != Action::Delete {
                        waits[i].insert(j);
                    }
                }
            }
        }
    }
    // Rollouts: updates of one block's instances go `parallel` at a time in order (rolling), or
    // are all staged and then switched together (two-phase).
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of: Vec<Option<usize>> = vec![None; n];
    {
        let mut by_block: HashMap<(usize, &str), Vec<usize>> = HashMap::new();
        let mut policy: HashMap<(usize, &str), crate::provider::Rollout> = HashMap::new();
        for (i, c) in plan.changes.iter().enumerate() {
            let (Some(m), Some(after), Action::Update) = (c.module, &c.after, c.action) else {
                continue;
            };
            let Some(r) = registry
                .provider(&c.provider)
                .and_then(|p| p.rollout(&c.kind, after))
            else {
                continue;
            };
            by_block
                .entry((m, c.resource.as_str()))
                .or_default()
                .push(i);
            policy.insert((m, c.resource.as_str()), r);
        }
        let mut blocks: Vec<_> = by_block.into_iter().collect();
        blocks.sort();
        for (block, members) in blocks {
            let r = &policy[&block];
            if !r.two_phase && !r.progressive {
                for k in r.parallel..members.len() {
                    waits[members[k]].insert(members[k - r.parallel]);
                }
            }
            for &i in &members {
                group_of[i] = Some(groups.len());
            }
            groups.push(Group {
                members,
                two_phase: r.two_phase || r.progressive,
                reported: 0,
                staged: vec![],
                failed: None,
                progressive: r.progressive,
                config: None,
                priors: HashMap::new(),
                analysing: vec![],
                verdict: None,
            });
        }
    }
    // Live progress from long steps reaches `on_event` through the main loop.
    // So do the retries that steps announce.
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let progress_tx = events_tx.clone();
    let progress = move |block: String| -> Progress {
        let tx = progress_tx.clone();
        std::sync::Arc::new(move |note: Note| {
            let _ = tx.send(match note {
                Note::Line(message) => Event::Progress {
                    addr: block.clone(),
                    message,
                },
                Note::Artifact { kind, path } => Event::Artifact {
                    addr: block.clone(),
                    kind,
                    path,
                },
            });
        })
    };
    let retry = |addr: &str| Retry {
        policy: opts.retry.clone(),
        cancel: opts.cancel.clone(),
        events: events_tx.clone(),
        addr: addr.to_string(),
    };
    // Ctrl-C: nothing new starts at once (and analyses stop, as aborts); running steps have
    // `grace` to finish, then their steps are cancelled and must return soon.
    let stop_now = CancelToken::new();
    let steps_cancel = CancelToken::new();
    let _watcher = AbortOnDrop(tokio::spawn({
        let (flag, stop_now, steps_cancel, grace) = (
            opts.cancel.clone(),
            stop_now.clone(),
            steps_cancel.clone(),
            opts.grace,
        );
        async move {
            while !flag.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stop_now.cancel();
            tokio::time::sleep(grace).await;
            steps_cancel.cancel();
        }
    }));
    // Steps reach the resources joined to theirs through the engine (`Step::peers`); the
    // main loop answers from the state and journals what their actions change.
    let deps_by_block = block_deps(plan, store);
    let (peer_tx, mut peer_rx) = tokio::sync::mpsc::unbounded_channel::<PeerRequest>();
    let shared_registry = Arc::new(registry.clone());
    let step_of = |addr: &str, progress: Progress| {
        let block = resource_addr(addr).to_string();
        let router = Router {
            of: addr.to_string(),
            blocks: neighbours(&deps_by_block, &block),
            block,
            registry: shared_registry.clone(),
            ctx: ctx.clone(),
            tx: peer_tx.clone(),
        };
        Step {
            addr: addr.to_string(),
            cancel: steps_cancel.clone(),
            deadline: None,
            progress,
            peers: crate::step::Peers::new(addr, Arc::new(router)),
        }
    };
    // What a peer's action changed is what references see from now on.
    let on_journal = |addr: &str, rs: &ResourceState| {
        if let Some(c) = plan.changes.iter().find(|c| c.addr == addr) {
            if let Some(m) = c.module {
                world.set_instance(
                    m,
                    &c.resource,
                    &exp_of[&(m, c.resource.clone())],
                    c.key.clone(),
                    state_value(registry, rs),
                );
            }
        }
    };
    let mut queue = Queue::new(&waits);
    let mut spawn_later: Vec<(usize, Phase)> = Vec::new();
    let mut report = ApplyReport::default();
    // Attributes found sensitive once everything an instance depends on is known (a secret
    // the plan saw only as "known after apply"), by address.
    let mut sens_now: HashMap<String, Vec<String>> = HashMap::new();
    let mut running = tokio::task::JoinSet::new();
    let mut started: HashMap<usize, Instant> = HashMap::new();
    let parallelism = opts.parallelism.max(1);

    loop {
        while running.len() < parallelism {
            let Some(i) = queue.ready.pop_front() else {
                break;
            };
            let c = &plan.changes[i];
            if let Some(g) = group_of[i].filter(|&g| groups[g].two_phase) {
                if queue.blocked_by[i].is_some() || opts.cancel.load(Ordering::SeqCst) {
                    let grp = &mut groups[g];
                    grp.reported += 1;
                    grp.failed.get_or_insert_with(|| c.addr.clone());
                    spawn_later.extend(resolve(grp, plan, &progress));
                }
            }
            if let Some(b) = queue.blocked_by[i].clone() {
                let reason = format!("depends on {b}, which failed or was skipped");
                note_skipped(&mut report, on_event, &c.addr, reason);
                queue.finish(i, Some(&c.addr));
                continue;
            }
            if c.action == Action::NoOp {
                queue.finish(i, None);
                continue;
            }
            if opts.cancel.load(Ordering::SeqCst) {
                report.interrupted = true;
                let reason = "not started: interrupted".to_string();
                note_skipped(&mut report, on_event, &c.addr, reason);
                queue.finish(i, Some("the interrupted run"));
                continue;
            }
            let provider = registry.provider(&c.provider).cloned().ok_or_else(|| {
                Diagnostics::from(Diagnostic::new(format!(
                    "{}: unknown provider {}",
                    c.addr, c.provider
                )))
            })?;
            let prior = store.state().resources.get(&c.addr).cloned();
            let config_now = if c.action == Action::Delete {
                None
            } else {
                match evaluate_now(&plan.overrides, &world, config, registry, c, &exp_of) {
                    Ok(v) => {
                        if let Some((_, schema)) = registry.schema(&c.kind, Some(&c.provider)) {
                            let mut object = v.clone();
                            let found = crate::plan::mark_sensitive(schema, &v, &mut object);
                            sens_now.insert(c.addr.clone(), found);
                        }
                        Some(v)
                    }
                    Err(e) => {
                        note_failed(&mut report, on_event, c, ProviderError::new(e));
                        queue.finish(i, Some(&c.addr));
                        // A two-phase group waits for every member: this one is done (failed).
                        if let Some(g) = group_of[i].filter(|&g| groups[g].two_phase) {
                            groups[g].reported += 1;
                            groups[g].failed.get_or_insert_with(|| c.addr.clone());
                            spawn_later.extend(resolve(&mut groups[g], plan, &progress));
                        }
                        continue;
                    }
                }
            };
            // Journal the intent first: a crash from here on leaves a Pending record that the next
            // plan cleans up and redoes, never a forgotten object.
            if matches!(c.action, Action::Create | Action::Replace) {
                let mut attrs = prior.as_ref().map(|p| p.attrs.clone()).unwrap_or_default();
                if let Some(cfg) = &config_now {
                    for (k, v) in cfg {
                        if v.is_known() {
                            attrs.insert(k.clone(), v.to_json());
                        }
                    }
                }
                record(
                    store,
                    JournalEntry::Set {
                        addr: c.addr.clone(),
                        resource: resource_state(&sens_now, c, attrs, Status::Pending),
                    },
                )?;
            }
            on_event(&Event::Started {
                addr: c.addr.clone(),
                action: c.action,
            });
            started.insert(i, Instant::now());
            let (ctx, kind, addr, action) = (ctx.clone(), c.kind.clone(), c.addr.clone(), c.action);
            let prior_attrs = prior.map(|p| p.attrs);
            let phase = if let Some(g) = group_of[i].filter(|&g| groups[g].two_phase) {
                if groups[g].progressive {
                    let grp = &mut groups[g];
                    if grp.config.is_none() {
                        grp.config = config_now.clone();
                    }
                    grp.priors
                        .insert(i, prior_attrs.clone().unwrap_or_default());
                }
                Phase::Stage
            } else {
                Phase::Normal
            };
            let retry = retry(&addr);
            let step = step_of(&addr, progress(addr.clone()));
            let timeouts = timeouts_of(config, registry, c);
            running.spawn(async move {
                let r = run_step(
                    provider,
                    ctx,
                    kind,
                    addr,
                    action,
                    prior_attrs,
                    config_now,
                    phase,
                    Call {
                        retry,
                        step,
                        timeouts,
                    },
                )
                .await;
                (i, r)
            });
        }
        // Commits or aborts of two-phase groups that just resolved.
        for (i, phase) in std::mem::take(&mut spawn_later) {
            let c = &plan.changes[i];
            let provider = registry.provider(&c.provider).cloned().ok_or_else(|| {
                Diagnostics::from(Diagnostic::new(format!(
                    "{}: unknown provider {}",
                    c.addr, c.provider
                )))
            })?;
            let (ctx, kind, addr, action) = (ctx.clone(), c.kind.clone(), c.addr.clone(), c.action);
            let retry = retry(&addr);
            let mut step = step_of(&addr, progress(addr.clone()));
            match &phase {
                Phase::Analyze { progress, .. } => {
                    // A judgement, not a change in progress: Ctrl-C stops it at once, as an abort.
                    step.cancel = stop_now.clone();
                    step.progress = progress.clone();
                }
                // Undoing what was staged is what Ctrl-C asks for: never cancelled (its
                // deadline still bounds it).
                Phase::Abort(_) => step.cancel = CancelToken::new(),
                _ => {}
            }
            let timeouts = timeouts_of(config, registry, c);
            let call = Call {
                retry,
                step,
                timeouts,
            };
            running.spawn(async move {
                let r = run_step(provider, ctx, kind, addr, action, None, None, phase, call).await;
                (i, r)
            });
        }
        if running.is_empty() && !spawn_later.is_empty() {
            continue;
        }
        let joined = loop {
            tokio::select! {
                j = running.join_next() => break j,
                Some(e) = events_rx.recv() => on_event(&e),
                Some(q) = peer_rx.recv() => serve_peer(q, store, &mut |a, rs| on_journal(a, rs)),
            }
        };
        while let Ok(e) = events_rx.try_recv() {
            on_event(&e);
        }
        let Some(joined) = joined else {
            break;
        };
        let (i, result) = joined.map_err(|e| {
            Diagnostics::from(Diagnostic::new(format!("an apply task panicked: {e}")))
        })?;
        if let Ok(Outcome::Analyzed(verdict)) = result {
            // Promote: switch every member. Abort: stop every staged version.
            let g = group_of[i].expect("analysed steps belong to a group");
            let grp = &mut groups[g];
            if let Err(a) = &verdict {
                grp.failed = Some(format!("the canary ({})", a.reason));
            }
            let promote = verdict.is_ok();
            grp.verdict = Some(verdict);
            for (j, staged) in std::mem::take(&mut grp.analysing) {
                spawn_later.push((
                    j,
                    if promote {
                        Phase::Commit(staged)
                    } else {
                        Phase::Abort(staged)
                    },
                ));
            }
            continue;
        }
        let c = &plan.changes[i];
        let elapsed = started.remove(&i).map(|s| s.elapsed()).unwrap_or_default();
        match result {
            Ok(Outcome::Applied(attrs)) => {
                record(
                    store,
                    JournalEntry::Set {
                        addr: c.addr.clone(),
                        resource: resource_state(&sens_now, c, attrs.clone(), Status::Ready),
                    },
                )?;
                if let Some(m) = c.module {
                    let rs = resource_state(&sens_now, c, attrs, Status::Ready);
                    world.set_instance(
                        m,
                        &c.resource,
                        &exp_of[&(m, c.resource.clone())],
                        c.key.clone(),
                        state_value(registry, &rs),
                    );
                }
                on_event(&Event::Finished {
                    addr: c.addr.clone(),
                    action: c.action,
                    elapsed,
                });
                report.succeeded.push((c.addr.clone(), c.action));
                queue.finish(i, None);
            }
            Ok(Outcome::Staged(attrs)) => {
                // The step goes on until its commit: keep timing it.
                started.insert(i, Instant::now() - elapsed);
                let g = group_of[i].expect("staged steps belong to a group");
                groups[g].reported += 1;
                groups[g].staged.push((i, attrs));
                spawn_later.extend(resolve(&mut groups[g], plan, &progress));
            }
            Ok(Outcome::Aborted) if group_of[i].is_some_and(|g| groups[g].progressive) => {
                // The release is recorded as aborted: the instance runs what it ran before, and
                // the next plan shows the change still to do, saying why it was stopped.
                let g = group_of[i].expect("checked above");
                let a = match &groups[g].verdict {
                    Some(Err(a)) => a.clone(),
                    _ => Aborted {
                        step: 0,
                        reason: format!(
                            "{} did not stage (it failed or was not started), so no traffic was shifted",
                            groups[g].failed.clone().unwrap_or_default()
                        ),
                    },
                };
                if let Some(rec) = store.state().resources.get(&c.addr).cloned() {
                    let mut attrs = rec.attrs.clone();
                    let at = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let target = groups[g]
                        .config
                        .as_ref()
                        .map(crate::plan::config_fingerprint);
                    attrs.insert(
                        "canary_aborted".into(),
                        serde_json::json!({ "step": a.step, "reason": a.reason, "at": at, "target": target }),
                    );
                    record(
                        store,
                        JournalEntry::Set {
                            addr: c.addr.clone(),
                            resource: ResourceState { attrs, ..rec },
                        },
                    )?;
                }
                let msg = if a.step == 0 {
                    format!(
                        "canary aborted before any traffic: {}; the previous version keeps serving",
                        a.reason
                    )
                } else {
                    format!("canary aborted at {}% of the traffic: {}; the candidate gets no traffic and was stopped, the previous version keeps serving", a.step, a.reason)
                };
                note_failed(&mut report, on_event, c, ProviderError::new(msg));
                queue.finish(i, Some(&c.addr));
            }
            Ok(Outcome::Aborted) => {
                let g = group_of[i].expect("aborted steps belong to a group");
                let failed = groups[g].failed.clone().unwrap_or_default();
                note_skipped(&mut report, on_event, &c.addr, format!("not switched: {failed} failed, so the blue-green switch was called off and the old version keeps serving"));
                queue.finish(i, Some(&c.addr));
            }
            Ok(Outcome::Analyzed(_)) => unreachable!("handled before the match"),
            Ok(Outcome::Deleted) => {
                record(
                    store,
                    JournalEntry::Remove {
                        addr: c.addr.clone(),
                    },
                )?;
                on_event(&Event::Finished {
                    addr: c.addr.clone(),
                    action: c.action,
                    elapsed,
                });
                report.succeeded.push((c.addr.clone(), c.action));
                queue.finish(i, None);
            }
            Err(e) => {
                // Stopped by Ctrl-C: the record stays Pending (what exists is unknown); the
                // next plan replaces it, cleaning up first, as after a crash.
                let Failed {
                    error: mut e,
                    interrupted,
                } = e;
                // An update that got part of the way: record what exists now.
                if let Some(now) = e.partial.take().filter(|_| c.action == Action::Update) {
                    record(
                        store,
                        JournalEntry::Set {
                            addr: c.addr.clone(),
                            resource: resource_state(&sens_now, c, *now, Status::Ready),
                        },
                    )?;
                }
                if matches!(c.action, Action::Create | Action::Replace) && !interrupted {
                    // Possibly half-made: the next plan replaces it, cleaning up first.
                    let attrs = store
                        .state()
                        .resources
                        .get(&c.addr)
                        .map(|r| r.attrs.clone())
                        .unwrap_or_default();
                    record(
                        store,
                        JournalEntry::Set {
                            addr: c.addr.clone(),
                            resource: resource_state(&sens_now, c, attrs, Status::Tainted),
                        },
                    )?;
                }
                note_failed(&mut report, on_event, c, e);
                queue.finish(i, Some(&c.addr));
                if let Some(g) = group_of[i].filter(|&g| {
                    groups[g].two_phase && !groups[g].staged.iter().any(|(j, _)| *j == i)
                }) {
                    groups[g].reported += 1;
                    groups[g].failed.get_or_insert_with(|| c.addr.clone());
                    spawn_later.extend(resolve(&mut groups[g], plan, &progress));
                }
            }
        }
    }
    // A rolling update that stopped on a failure returns the instances it already changed.
    for g in groups.iter().filter(|g| !g.two_phase) {
        let failed = g.members.iter().any(|&i| {
            report.failed.iter().any(|f| f.addr == plan.changes[i].addr) || !queue.done[i]
        });
        let stopped = failed
            || g.members.iter().any(|&i| {
                report
                    .skipped
                    .iter()
                    .any(|(a, _)| *a == plan.changes[i].addr)
            });
        if !stopped {
            continue;
        }
        for &i in &g.members {
            let c = &plan.changes[i];
            if !report.succeeded.iter().any(|(a, _)| *a == c.addr) {
                continue;
            }
            let (Some(before), Some(current)) =
                (&c.before, store.state().resources.get(&c.addr).cloned())
            else {
                continue;
            };
            let Some((_, schema)) = registry.schema(&c.kind, Some(&c.provider)) else {
                continue;
            };
            let old: ValueMap = schema
                .attrs
                .iter()
                .filter(|a| a.settable())
                .map(|a| {
                    (
                        a.name.to_string(),
                        before.get(a.name).cloned().unwrap_or(Value::Null),
                    )
                })
                .collect();
            let provider = registry.provider(&c.provider).cloned().ok_or_else(|| {
                Diagnostics::from(Diagnostic::new(format!("unknown provider {}", c.provider)))
            })?;
            let req = ApplyRequest {
                kind: &c.kind,
                addr: &c.addr,
                config: &old,
                prior: Some(&current.attrs),
            };
            // A rollback is cleanup: Ctrl-C does not cancel it (its deadline bounds it).
            let step = Step {
                cancel: CancelToken::new(),
                ..step_of(&c.addr, progress(c.addr.clone()))
            }
            .bounded(Op::Update, timeouts_of(config, registry, c).update);
            let retrying = retry(&c.addr);
            let rolling_back = retrying.run(&step, || provider.apply(ctx, &req, &step));
            tokio::pin!(rolling_back);
            let rolled = loop {
                tokio::select! {
                    r = &mut rolling_back => break r,
                    Some(q) = peer_rx.recv() => serve_peer(q, store, &mut |a, rs| on_journal(a, rs)),
                }
            };
            while let Ok(e) = events_rx.try_recv() {
                on_event(&e);
            }
            match rolled {
                Ok(attrs) => {
                    record(
                        store,
                        JournalEntry::Set {
                            addr: c.addr.clone(),
                            resource: resource_state(&sens_now, c, attrs, Status::Ready),
                        },
                    )?;
                    on_event(&Event::RolledBack {
                        addr: c.addr.clone(),
                    });
                    report.rolled_back.push(c.addr.clone());
                }
                Err(Failed { error, .. }) => note_failed(
                    &mut report,
                    on_event,
                    c,
                    ProviderError {
                        message: format!("rolling back failed too: {}", error.message),
                        ..error
                    },
                ),
            }
        }
    }
    if opts.cancel.load(Ordering::SeqCst) {
        report.interrupted = true;
    }
    for (i, d) in queue.done.iter().enumerate() {
        if !d {
            let c = &plan.changes[i];
            report.skipped.push((c.addr.clone(), "not started".into()));
        }
    }
    // Outputs from what is true now.
    if plan.destroy {
        record(
            store,
            JournalEntry::Outputs {
                outputs: Default::default(),
            },
        )?;
    } else {
        let mut p = plan.clone();
        for o in &mut p.outputs {
            if config.modules[0].outputs.contains_key(&o.name) {
                o.after = world.node_value(&crate::graph::Node::Output(0, o.name.clone()));
                // A value known only now may carry a secret the plan could not see.
                o.sensitive |= o.after.as_ref().is_some_and(Value::is_sensitive);
            }
        }
        let outs = state_outputs(&p);
        if outs != store.state().outputs {
            record(store, JournalEntry::Outputs { outputs: outs })?;
        }
    }
    store.compact().map_err(state_err)?;
    Ok(report)
}

/// When every member of a two-phase group has staged or failed: commit all, or abort all.
/// A progressive group that staged in full is analysed first (one step for the block).
fn resolve(
    g: &mut Group,
    plan: &Plan,
    progress: &dyn Fn(String) -> Progress,
) -> Vec<(usize, Phase)> {
    if g.reported < g.members.len() {
        return vec![];
    }
    let staged = std::mem::take(&mut g.staged);
    let commit = g.failed.is_none();
    if commit && g.progressive && g.verdict.is_none() && !staged.is_empty() {
        let first = staged.iter().map(|(i, _)| *i).min().expect("not empty");
        let block = resource_addr(&plan.changes[first].addr).to_string();
        let members = staged
            .iter()
            .map(|(i, a)| Staged {
                addr: plan.changes[*i].addr.clone(),
                prior: g.priors.get(i).cloned().unwrap_or_default(),
                staged: a.clone(),
            })
            .collect();
        g.analysing = staged;
        return vec![(
            first,
            Phase::Analyze {
                block: block.clone(),
                config: g.config.clone().unwrap_or_default(),
                members,
                progress: progress(block),
            },
        )];
    }
    staged
        .into_iter()
        .map(|(i, a)| {
            (
                i,
                if commit {
                    Phase::Commit(a)
                } else {
                    Phase::Abort(a)
                },
            )
        })
        .collect()
}

fn note_skipped(
    report: &mut ApplyReport,
    on_event: &mut dyn FnMut(&Event),
    addr: &str,
    reason: String,
) {
    on_event(&Event::Skipped {
        addr: addr.to_string(),
        reason: reason.clone(),
    });
    report.skipped.push((addr.to_string(), reason));
}

fn note_failed(
    report: &mut ApplyReport,
    on_event: &mut dyn FnMut(&Event),
    c: &ResourceChange,
    error: ProviderError,
) {
    on_event(&Event::Failed {
        addr: c.addr.clone(),
        action: c.action,
        error: error.to_string(),
    });
    report.failed.push(Failure {
        addr: c.addr.clone(),
        action: c.action,
        error,
    });
}

/// Which nodes are ready, which wait for how many others, and which are blocked by a failure.
struct Queue {
    ready: VecDeque<usize>,
    pending: Vec<usize>,
    dependents: Vec<Vec<usize>>,
    blocked_by: Vec<Option<String>>,
    done: Vec<bool>,
}

impl Queue {
    fn new(waits: &[HashSet<usize>]) -> Queue {
        let n = waits.len();
        let mut dependents = vec![Vec::new(); n];
        let pending: Vec<usize> = waits.iter().map(HashSet::len).collect();
        for (i, w) in waits.iter().enumerate() {
            for &j in w {
                dependents[j].push(i);
            }
        }
        Queue {
            ready: (0..n).filter(|&i| pending[i] == 0).collect(),
            pending,
            dependents,
            blocked_by: vec![None; n],
            done: vec![false; n],
        }
    }

    /// Node `i` is over; its dependents move on, blocked when `failed` names what failed.
    fn finish(&mut self, i: usize, failed: Option<&str>) {
        self.done[i] = true;
        for &d in &self.dependents[i] {
            if let Some(f) = failed {
                self.blocked_by[d].get_or_insert_with(|| f.to_string());
            }
            self.pending[d] -= 1;
            if self.pending[d] == 0 {
                self.ready.push_back(d);
            }
        }
    }
}

fn evaluate_now(
    overrides: &[(String, String, Value)],
    world: &World<'_>,
    config: &Config,
    registry: &Registry,
    c: &ResourceChange,
    exp_of: &HashMap<(usize, String), Expansion>,
) -> Result<ValueMap, String> {
    let m = c.module.ok_or("no block for this instance")?;
    let decl = &config.modules[m].resources[&c.resource];
    let (_, schema) = registry
        .schema(&decl.kind, Some(&decl.provider))
        .ok_or("no schema")?;
    let exp = &exp_of[&(m, c.resource.clone())];
    let mut scope = instance_scope(world, m, exp, &c.key);
    // `each.value` as it is now: the plan's may hold what was known only after apply then
    // (`for_each = host.web`, each host's attributes), applied since. The keys are the plan's.
    if let (Some(f), Some(crate::world::InstanceKey::Str(k))) = (&decl.for_each, &c.key) {
        if let Ok(Value::Map(now)) = world.eval(&world.scope(m), f).map(|v| v.unmarked().0) {
            if let Some(v) = now.get(k) {
                scope.each = Some((k.clone(), v.clone()));
            }
        }
    }
    let mut cfg = eval_attrs(world, &scope, decl, schema).map_err(|d| {
        // A local or variable computed on demand records its own error in the world and the
        // attribute only says "could not be evaluated": show the cause with it.
        let mut text = d.to_string();
        for cause in world.diags.borrow().iter().filter(|c| !c.secondary) {
            let cause = cause.to_string();
            if !text.contains(&cause) {
                text.push_str(&cause);
            }
        }
        text
    })?;
    let block = format!("{}{}", config.modules[m].prefix, c.resource);
    for (b, attr, v) in overrides {
        if *b == block {
            cfg.insert(attr.clone(), v.clone());
        }
    }
    if let Some((k, _)) = cfg.iter().find(|(_, v)| !v.is_known()) {
        return Err(format!(
            "`{k}` is still unknown although everything it depends on was applied"
        ));
    }
    Ok(cfg)
}

#[allow(clippy::too_many_arguments)]
async fn run_step(
    provider: Arc<dyn crate::provider::Provider>,
    ctx: ProviderCtx,
    kind: String,
    addr: String,
    action: Action,
    prior: Option<JsonMap>,
    config: Option<ValueMap>,
    phase: Phase,
    call: Call,
) -> Result<Outcome, Failed> {
    let p = provider.as_ref();
    let Call {
        retry,
        step,
        timeouts,
    } = call;
    // Each call gets its own deadline from when it starts, by what it does.
    let bound = |op: Op| step.clone().bounded(op, timeouts.get(op));
    match phase {
        Phase::Normal => {}
        Phase::Stage => {
            let cfg = config.unwrap_or_default();
            let req = ApplyRequest {
                kind: &kind,
                addr: &addr,
                config: &cfg,
                prior: prior.as_ref(),
            };
            let s = bound(if prior.is_some() {
                Op::Update
            } else {
                Op::Create
            });
            return Ok(Outcome::Staged(
                retry.run(&s, || p.stage(&ctx, &req, &s)).await?,
            ));
        }
        Phase::Commit(staged) => {
            let s = bound(Op::Update);
            return Ok(Outcome::Applied(
                retry
                    .run(&s, || p.commit(&ctx, &kind, &addr, &staged, &s))
                    .await?,
            ));
        }
        Phase::Abort(staged) => {
            let s = bound(Op::Delete);
            retry
                .run(&s, || p.abort(&ctx, &kind, &addr, &staged, &s))
                .await?;
            return Ok(Outcome::Aborted);
        }
        Phase::Analyze {
            block,
            config,
            members,
            ..
        } => {
            // No per-resource deadline: the canary's own steps say how long it runs.
            return Ok(Outcome::Analyzed(
                provider
                    .analyze(&ctx, &kind, &block, &config, &members, &step)
                    .await,
            ));
        }
    }
    match action {
        Action::Delete => {
            if let Some(prior) = &prior {
                let s = bound(Op::Delete);
                retry
                    .run(&s, || p.delete(&ctx, &kind, &addr, prior, &s))
                    .await?;
            }
            Ok(Outcome::Deleted)
        }
        Action::Replace => {
            if let Some(prior) = &prior {
                let s = bound(Op::Delete);
                retry
                    .run(&s, || p.delete(&ctx, &kind, &addr, prior, &s))
                    .await?;
            }
            let cfg = config.unwrap_or_default();
            let req = ApplyRequest {
                kind: &kind,
                addr: &addr,
                config: &cfg,
                prior: None,
            };
            let s = bound(Op::Create);
            let attrs = retry.run(&s, || p.apply(&ctx, &req, &s)).await?;
            Ok(Outcome::Applied(attrs))
        }
        Action::Create | Action::Update => {
            let cfg = config.unwrap_or_default();
            let (prior, op) = if action == Action::Update {
                (prior.as_ref(), Op::Update)
            } else {
                (None, Op::Create)
            };
            let req = ApplyRequest {
                kind: &kind,
                addr: &addr,
                config: &cfg,
                prior,
            };
            let s = bound(op);
            let attrs = retry.run(&s, || p.apply(&ctx, &req, &s)).await?;
            Ok(Outcome::Applied(attrs))
        }
        Action::NoOp => unreachable!("no-ops are not run"),
    }
}

/// A step's failure, and whether Ctrl-C stopped it in the middle of a call (then what exists
/// is unknown: the record stays Pending).
struct Failed {
    error: ProviderError,
    interrupted: bool,
}

/// What a spawned step needs besides its request: its retries, its context, its limits.
struct Call {
    retry: Retry,
    step: Step,
    timeouts: Timeouts,
}

/// A block's `timeouts`, else its provider's defaults (also for a removed block's delete).
fn timeouts_of(config: &Config, registry: &Registry, c: &ResourceChange) -> Timeouts {
    let written = c
        .module
        .and_then(|m| config.modules.get(m)?.resources.get(&c.resource))
        .map(|d| d.timeouts)
        .unwrap_or_default();
    let defaults = registry
        .provider(&c.provider)
        .map(|p| p.default_timeouts(&c.kind))
        .unwrap_or_default();
    written.or(defaults)
}

/// How long past its deadline (or its cancel) a provider call may take to stop on its own,
/// cleaning up, before the engine stops waiting for it.
const BACKSTOP: Duration = Duration::from_millis(500);

/// Aborts a background task when the apply is over, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Retries of one step's provider calls: by the error's kind, never its words.
struct Retry {
    policy: RetryPolicy,
    cancel: Arc<AtomicBool>,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    addr: String,
}

impl Retry {
    /// `attempts`, bounded by `step`: a call that goes on past the step's deadline or cancel
    /// (plus `BACKSTOP` to stop on its own) is abandoned with the step's error, and an error
    /// that comes after the deadline names it.
    async fn run<'a, T, F>(&self, step: &Step, f: F) -> Result<T, Failed>
    where
        F: FnMut() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, ProviderError>> + Send + 'a>,
        >,
    {
        let backstop = async {
            let why = step.stop().await;
            tokio::time::sleep(BACKSTOP).await;
            why
        };
        let r = tokio::select! {
            r = self.attempts(step, f) => r,
            why = backstop => Err((step.error(why), true)),
        };
        r.map_err(|(e, in_call)| Failed {
            // A call that ended while its step was cancelled was interrupted; a backoff wait
            // that Ctrl-C ended was not (the failure before it stands).
            interrupted: in_call && step.cancel.is_cancelled(),
            error: match step.stopped() {
                Some(Stop::Deadline) => {
                    let d = step.error(Stop::Deadline);
                    // Already the deadline's own error (the shared wait gave it): once is enough.
                    if e.cause.as_deref() == Some(&Cause::Deadline) {
                        e
                    } else {
                        ProviderError {
                            message: format!("{}: {}", d.message, e.message),
                            ..d
                        }
                    }
                }
                _ => e,
            },
        })
    }

    /// Call `f` until it succeeds, fails with an error that is not retryable, runs out of
    /// attempts, or the run is cancelled during a wait; each retry is announced first. No
    /// attempt starts after the step's deadline.
    async fn attempts<'a, T, F>(&self, step: &Step, mut f: F) -> Result<T, (ProviderError, bool)>
    where
        F: FnMut() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, ProviderError>> + Send + 'a>,
        >,
    {
        let attempts = self.policy.attempts.max(1);
        let mut attempt = 1;
        loop {
            let mut e = match f().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !e.kind.retryable() {
                return Err((e, true));
            }
            if attempt >= attempts {
                if attempt > 1 {
                    e.message = format!("{} (gave up after {attempt} attempts)", e.message);
                }
                return Err((e, true));
            }
            let delay = self.policy.delay(e.kind, attempt, jitter());
            if let (Some(left), Some(d)) = (step.remaining(), step.deadline) {
                if left <= delay {
                    e.message = format!(
                        "{} (not retried: timeouts.{} of {} ends before the next attempt; {attempt} attempt{} made)",
                        e.message,
                        d.op.name(),
                        crate::step::format_duration(d.limit),
                        if attempt == 1 { "" } else { "s" }
                    );
                    return Err((e, true));
                }
            }
            let _ = self.events.send(Event::Retrying {
                addr: self.addr.clone(),
                attempt: attempt + 1,
                of: attempts,
                kind: e.kind,
                delay,
                error: e.message.clone(),
            });
            if !self.wait(step, delay).await {
                e.message = format!(
                    "{} (interrupted while waiting to retry, after {attempt} attempt{})",
                    e.message,
                    if attempt == 1 { "" } else { "s" }
                );
                return Err((e, false));
            }
            attempt += 1;
        }
    }

    /// Sleep for `d` unless cancelled first (a new attempt is something new: Ctrl-C ends the
    /// wait at once); false when cancelled.
    async fn wait(&self, step: &Step, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            if self.cancel.load(Ordering::SeqCst) || step.cancel.is_cancelled() {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            tokio::time::sleep(left.min(Duration::from_millis(50))).await;
        }
    }
}

/// A number in [0, 1) that differs between calls and processes, so that many instances retrying
/// at once spread out.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

fn resource_state(
    sens_now: &HashMap<String, Vec<String>>,
    c: &ResourceChange,
    attrs: JsonMap,
    status: Status,
) -> ResourceState {
    let mut sensitive = c.sensitive.clone();
    for a in sens_now.get(&c.addr).into_iter().flatten() {
        if !sensitive.contains(a) {
            sensitive.push(a.clone());
        }
    }
    ResourceState {
        kind: c.kind.clone(),
        provider: c.provider.clone(),
        status,
        attrs,
        sensitive,
        deps: c.deps.clone(),
    }
}

/// A recorded instance as references see it: its schema's attributes only (providers keep
/// bookkeeping of their own in state, which plans never see), sensitive ones marked.
pub fn state_value(registry: &Registry, rs: &ResourceState) -> Value {
    let schema = registry
        .schema(&rs.kind, Some(&rs.provider))
        .map(|(_, s)| s);
    Value::Map(
        rs.attrs
            .iter()
            .filter(|(k, _)| schema.is_none_or(|s| s.attr(k).is_some()))
            .map(|(k, v)| {
                (
                    k.clone(),
                    Value::from_json(v).mark(rs.sensitive.iter().any(|s| s == k)),
                )
            })
            .collect(),
    )
}

fn record(store: &mut StateStore, e: JournalEntry) -> Result<(), Diagnostics> {
    store.record(e).map_err(state_err)
}

pub fn state_err(e: pipeline_state::StateError) -> Diagnostics {
    Diagnostic::new(format!("{e}")).into()
}

/// What a step's [`Peers`](crate::step::Peers) ask of the apply's main loop, which alone holds
/// the state: the records of some blocks, or a record an action changed, to journal.
enum PeerRequest {
    Records {
        blocks: Vec<String>,
        reply: tokio::sync::oneshot::Sender<Vec<(String, ResourceState)>>,
    },
    Journal {
        addr: String,
        attrs: JsonMap,
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
}

/// Which blocks each block depends on, from the plan and the state (a targeted plan leaves
/// some out; the state's recorded `deps` still name them).
fn block_deps(plan: &Plan, store: &StateStore) -> HashMap<String, HashSet<String>> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    let from_plan = plan.changes.iter().map(|c| (c.addr.as_str(), &c.deps));
    let from_state = store
        .state()
        .resources
        .iter()
        .map(|(a, r)| (a.as_str(), &r.deps));
    for (addr, deps) in from_plan.chain(from_state) {
        let block = resource_addr(addr);
        let set = out.entry(block.to_string()).or_default();
        set.extend(
            deps.iter()
                .map(|d| resource_addr(d).to_string())
                .filter(|d| d != block),
        );
    }
    out
}

/// The blocks joined to `block` by an edge of the graph: (block, whether `block` depends on it).
fn neighbours(deps: &HashMap<String, HashSet<String>>, block: &str) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = deps
        .get(block)
        .into_iter()
        .flatten()
        .map(|d| (d.clone(), true))
        .collect();
    for (b, ds) in deps {
        if ds.contains(block) && !out.iter().any(|(o, _)| o == b) {
            out.push((b.clone(), false));
        }
    }
    out.sort();
    out
}

/// The engine's side of [`Peers`](crate::step::Peers) for one step: resolves an address to
/// the provider configuration that recorded it and calls it there.
struct Router {
    /// The step's address and block.
    of: String,
    block: String,
    blocks: Vec<(String, bool)>,
    registry: Arc<Registry>,
    ctx: ProviderCtx,
    tx: tokio::sync::mpsc::UnboundedSender<PeerRequest>,
}

impl Router {
    async fn records(&self, blocks: Vec<String>) -> Vec<(String, ResourceState)> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if self
            .tx
            .send(PeerRequest::Records { blocks, reply })
            .is_err()
        {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The record of `addr` and its provider, if this step may address it.
    async fn resolve(
        &self,
        addr: &str,
    ) -> Result<(ResourceState, Arc<dyn crate::provider::Provider>), ProviderError> {
        let block = resource_addr(addr);
        if !self.blocks.iter().any(|(b, _)| b == block) {
            return Err(ProviderError::invalid_config(format!(
                "{}: cannot address {addr}: {} does not depend on it, nor does it depend on {}",
                self.of, self.block, self.block
            ))
            .help(format!(
                "a provider addresses only resources joined to its own by the graph: reference {block} from {} (or add depends_on), or reference {} from {block}",
                self.block, self.block
            )));
        }
        let rs = self
            .records(vec![block.to_string()])
            .await
            .into_iter()
            .find(|(a, _)| a == addr)
            .map(|(_, r)| r)
            .ok_or_else(|| {
                ProviderError::new(format!(
                    "{}: {addr} is not recorded (not created yet, or deleted)",
                    self.of
                ))
                .with_kind(ErrorKind::NotFound)
            })?;
        let p = self.registry.provider_of(&rs).cloned().ok_or_else(|| {
            ProviderError::new(format!(
                "{}: {addr} was recorded by the provider configuration {}, which this run does not have",
                self.of, rs.provider
            ))
        })?;
        Ok((rs, p))
    }
}

#[async_trait::async_trait]
impl crate::step::PeerRouter for Router {
    async fn peers(&self) -> Vec<crate::step::Peer> {
        let blocks = self.blocks.iter().map(|(b, _)| b.clone()).collect();
        let mut out: Vec<crate::step::Peer> = self
            .records(blocks)
            .await
            .into_iter()
            .map(|(addr, rs)| {
                let dependency = self
                    .blocks
                    .iter()
                    .any(|(b, d)| *d && b == resource_addr(&addr));
                let actions = self
                    .registry
                    .provider_of(&rs)
                    .map(|p| p.actions(&rs.kind).iter().map(|a| a.name.into()).collect())
                    .unwrap_or_default();
                crate::step::Peer {
                    addr,
                    kind: rs.kind,
                    provider: rs.provider,
                    dependency,
                    actions,
                }
            })
            .collect();
        out.sort_by(|a, b| a.addr.cmp(&b.addr));
        out
    }

    async fn describe(&self, addr: &str) -> Result<crate::provider::Description, ProviderError> {
        let (rs, p) = self.resolve(addr).await?;
        p.describe(&self.ctx, &rs.kind, addr, &rs.attrs).await
    }

    async fn action(
        &self,
        addr: &str,
        name: &str,
        args: &JsonMap,
    ) -> Result<crate::provider::ActionOutput, ProviderError> {
        let (rs, p) = self.resolve(addr).await?;
        let schemas = p.actions(&rs.kind);
        let Some(schema) = schemas.iter().find(|a| a.name == name) else {
            return Err(crate::provider::unknown_action(
                p.name(),
                &rs.kind,
                addr,
                name,
                &schemas,
            ));
        };
        let out = p
            .action(&self.ctx, &rs.kind, addr, &rs.attrs, name, args)
            .await?;
        if let (true, Some(attrs)) = (schema.changes_record, &out.record) {
            let (reply, rx) = tokio::sync::oneshot::channel();
            let sent = self.tx.send(PeerRequest::Journal {
                addr: addr.to_string(),
                attrs: attrs.clone(),
                reply,
            });
            let done = match sent {
                Ok(()) => rx.await.unwrap_or_else(|_| Err("the apply is over".into())),
                Err(_) => Err("the apply is over".into()),
            };
            done.map_err(|e| {
                ProviderError::new(format!(
                    "{}: {addr}'s `{name}` changed its record, which could not be journaled: {e}",
                    self.of
                ))
            })?;
        }
        Ok(out)
    }
}

/// Answer a step's peer request from the state (the main loop holds it, and the lock).
fn serve_peer(
    q: PeerRequest,
    store: &mut StateStore,
    on_journal: &mut dyn FnMut(&str, &ResourceState),
) {
    match q {
        PeerRequest::Records { blocks, reply } => {
            let recs = store
                .state()
                .resources
                .iter()
                .filter(|(a, _)| blocks.iter().any(|b| b == resource_addr(a)))
                .map(|(a, r)| (a.clone(), r.clone()))
                .collect();
            let _ = reply.send(recs);
        }
        PeerRequest::Journal { addr, attrs, reply } => {
            let Some(rec) = store.state().resources.get(&addr).cloned() else {
                let _ = reply.send(Err(format!("{addr} is no longer recorded")));
                return;
            };
            let rs = ResourceState { attrs, ..rec };
            let r = store
                .record(JournalEntry::Set {
                    addr: addr.clone(),
                    resource: rs.clone(),
                })
                .map_err(|e| e.to_string());
            if r.is_ok() {
                on_journal(&addr, &rs);
            }
            let _ = reply.send(r);
        }
    }
}
