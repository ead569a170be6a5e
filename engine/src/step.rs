//! The context of one provider call that changes the world or waits on it: who may stop it
//! (Ctrl-C), by when it must be over (the block's `timeouts`), and where its progress goes.
//!
//! The engine makes one `Step` per call; providers read it cooperatively (`check`, the waits
//! in `crate::wait`) and the engine enforces the deadline as a backstop around the call.

use crate::provider::{
    ActionOutput, Cause, Description, ErrorKind, JsonMap, Note, Progress, ProviderError,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A cheap, clonable cancellation flag that can also be awaited. Every clone sees the cancel.
#[derive(Clone, Default)]
pub struct CancelToken(Arc<Inner>);

#[derive(Default)]
struct Inner {
    flag: AtomicBool,
    notify: tokio::sync::Notify,
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CancelToken({})", self.is_cancelled())
    }
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.flag.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.flag.load(Ordering::SeqCst)
    }
    /// The flag itself, for blocking loops that poll an `AtomicBool` (the canary's).
    pub fn flag(&self) -> &AtomicBool {
        &self.0.flag
    }
    /// Resolves once cancelled (at once if it already is).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a cancel in between is not missed.
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// The operation a deadline bounds, as Terraform's `timeouts` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// Per-operation time limits: a block's `timeouts = { create = "10m", ... }`, or a provider's
/// defaults. None: unbounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub create: Option<Duration>,
    pub update: Option<Duration>,
    pub delete: Option<Duration>,
}

impl Timeouts {
    pub const KEYS: &'static [&'static str] = &["create", "update", "delete"];

    pub fn get(&self, op: Op) -> Option<Duration> {
        match op {
            Op::Create => self.create,
            Op::Update => self.update,
            Op::Delete => self.delete,
        }
    }
    pub fn set(&mut self, op: &str, d: Duration) -> bool {
        match op {
            "create" => self.create = Some(d),
            "update" => self.update = Some(d),
            "delete" => self.delete = Some(d),
            _ => return false,
        }
        true
    }
    /// What the stack says, else the provider's default, per operation.
    pub fn or(self, defaults: Timeouts) -> Timeouts {
        Timeouts {
            create: self.create.or(defaults.create),
            update: self.update.or(defaults.update),
            delete: self.delete.or(defaults.delete),
        }
    }
}

/// When a step must be over, and which limit said so (for the message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    pub at: Instant,
    pub limit: Duration,
    pub op: Op,
}

/// Why a step stopped before it was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Cancelled,
    Deadline,
}

/// Everything a provider call that changes or waits needs besides its request.
#[derive(Clone)]
pub struct Step {
    /// The instance (or block) the call is about, for messages.
    pub addr: String,
    /// Set on Ctrl-C (after running steps had their grace period): stop soon, leave what
    /// half-exists for `delete` to clean up, and return an error.
    pub cancel: CancelToken,
    pub deadline: Option<Deadline>,
    pub progress: Progress,
    /// The recorded resources joined to this one in the graph, whose actions and descriptions
    /// the engine routes to their own providers (a service's canary asks the balancer in front
    /// of it to split traffic). Empty outside an apply.
    pub peers: Peers,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("addr", &self.addr)
            .field("cancel", &self.cancel)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Step {
    /// A step nobody cancels, with no deadline, whose progress goes nowhere (commands outside
    /// an apply, tests).
    pub fn detached(addr: &str) -> Step {
        Step {
            addr: addr.to_string(),
            cancel: CancelToken::new(),
            deadline: None,
            progress: Arc::new(|_| {}),
            peers: Peers::default(),
        }
    }
    /// This step bounded by `limit` for `op` from now (None: unbounded).
    pub fn bounded(mut self, op: Op, limit: Option<Duration>) -> Step {
        self.deadline = limit.map(|limit| Deadline {
            at: Instant::now() + limit,
            limit,
            op,
        });
        self
    }
    /// Time left before the deadline (None: no deadline; zero: past it).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.at.saturating_duration_since(Instant::now()))
    }
    /// Whether the step must stop now, and why; cancel wins over the deadline.
    pub fn stopped(&self) -> Option<Stop> {
        if self.cancel.is_cancelled() {
            Some(Stop::Cancelled)
        } else if self.remaining().is_some_and(|r| r.is_zero()) {
            Some(Stop::Deadline)
        } else {
            None
        }
    }
    /// Ok while the step may go on; the error to return otherwise.
    pub fn check(&self) -> Result<(), ProviderError> {
        match self.stopped() {
            None => Ok(()),
            Some(s) => Err(self.error(s)),
        }
    }
    /// The error for a step stopped by `why`: the address, the operation and the limit.
    pub fn error(&self, why: Stop) -> ProviderError {
        match (why, self.deadline) {
            (Stop::Deadline, Some(d)) => ProviderError::new(format!(
                "{}: {} did not finish within {} (timeouts.{})",
                self.addr,
                d.op.name(),
                format_duration(d.limit),
                d.op.name()
            ))
            .with_kind(ErrorKind::Fatal)
            .cause(Cause::Deadline)
            .help(format!(
                "raise it with `timeouts = {{ {} = \"...\" }}` on the block if it needs longer; what half-exists is cleaned up by the next apply",
                d.op.name()
            )),
            _ => ProviderError::new(format!("{}: interrupted", self.addr))
                .help("the next apply cleans up what half-exists, or finishes it"),
        }
    }
    /// A line of live progress about this step.
    pub fn progress(&self, message: impl Into<String>) {
        (self.progress)(Note::Line(message.into()))
    }
    /// Resolves when the step must stop (cancelled or past its deadline), saying why.
    pub async fn stop(&self) -> Stop {
        let deadline = async {
            match self.deadline {
                Some(d) => tokio::time::sleep_until(d.at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.cancel.cancelled() => Stop::Cancelled,
            _ = deadline => Stop::Deadline,
        }
    }
    /// Sleep `d` unless the step must stop first; Err then.
    pub async fn sleep(&self, d: Duration) -> Result<(), ProviderError> {
        tokio::select! {
            why = self.stop() => Err(self.error(why)),
            _ = tokio::time::sleep(d) => self.check(),
        }
    }
    /// The blocking twin of `sleep`, for provider code on a blocking thread: wakes at least
    /// every 50 ms to look at the cancel flag.
    pub fn sleep_blocking(&self, d: Duration) -> Result<(), ProviderError> {
        let until = Instant::now() + d;
        loop {
            self.check()?;
            let mut left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            if let Some(r) = self.remaining() {
                left = left.min(r.max(Duration::from_millis(1)));
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}

/// A recorded resource a step may address through [`Peers`]: one joined to the step's own
/// resource by an edge of the graph (a reference or `depends_on`), either way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: String,
    pub kind: String,
    /// Its configuration key (`nginx`, `nginx.west`).
    pub provider: String,
    /// The step's resource depends on it (true), or it depends on the step's (false: a
    /// balancer whose routes name the service).
    pub dependency: bool,
    /// The actions its provider runs for it (`Provider::actions`).
    pub actions: Vec<String>,
}

/// What the engine does for [`Peers`]: apply implements it over its state and registry.
#[async_trait::async_trait]
pub trait PeerRouter: Send + Sync {
    /// The recorded resources the step may address, in address order.
    async fn peers(&self) -> Vec<Peer>;
    /// `Provider::describe` of a peer, by its provider (the configuration that recorded it).
    async fn describe(&self, addr: &str) -> Result<Description, ProviderError>;
    /// `Provider::action` of a peer, by its provider; a record the action changes (its schema
    /// says `changes_record`) is journaled before this returns.
    async fn action(
        &self,
        addr: &str,
        name: &str,
        args: &JsonMap,
    ) -> Result<ActionOutput, ProviderError>;
}

/// A step's way to other resources: providers cooperate through the engine and the graph,
/// never through each other's files. Cheap to clone; async and blocking forms of each call
/// (blocking ones for provider code on a blocking thread, never on a runtime thread).
#[derive(Clone, Default)]
pub struct Peers {
    router: Option<(Arc<dyn PeerRouter>, tokio::runtime::Handle)>,
    /// The step's own address, for messages.
    of: String,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Peers({}, {})", self.of, self.router.is_some())
    }
}

impl Peers {
    /// Peers of the step on `of`, answered by `router` (apply makes one per step). Call from
    /// within the runtime the blocking forms will use.
    pub fn new(of: &str, router: Arc<dyn PeerRouter>) -> Peers {
        Peers {
            router: tokio::runtime::Handle::try_current()
                .ok()
                .map(|rt| (router, rt)),
            of: of.to_string(),
        }
    }
    fn router(&self) -> Result<&Arc<dyn PeerRouter>, ProviderError> {
        self.router.as_ref().map(|(r, _)| r).ok_or_else(|| {
            ProviderError::invalid_config(format!(
                "{}: no other resource can be addressed outside an apply",
                self.of
            ))
        })
    }
    /// The recorded resources this step may address (none outside an apply).
    pub async fn list(&self) -> Vec<Peer> {
        match self.router() {
            Ok(r) => r.peers().await,
            Err(_) => Vec::new(),
        }
    }
    /// Peers whose provider runs the action `name` for them.
    pub async fn with_action(&self, name: &str) -> Vec<Peer> {
        let mut l = self.list().await;
        l.retain(|p| p.actions.iter().any(|a| a == name));
        l
    }
    pub async fn describe(&self, addr: &str) -> Result<Description, ProviderError> {
        self.router()?.describe(addr).await
    }
    pub async fn action(
        &self,
        addr: &str,
        name: &str,
        args: &JsonMap,
    ) -> Result<ActionOutput, ProviderError> {
        self.router()?.action(addr, name, args).await
    }
    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> Option<T> {
        self.router.as_ref().map(|(_, rt)| rt.block_on(f))
    }
    /// `list` from a blocking thread.
    pub fn list_blocking(&self) -> Vec<Peer> {
        self.block_on(self.list()).unwrap_or_default()
    }
    /// `with_action` from a blocking thread.
    pub fn with_action_blocking(&self, name: &str) -> Vec<Peer> {
        self.block_on(self.with_action(name)).unwrap_or_default()
    }
    /// `describe` from a blocking thread.
    pub fn describe_blocking(&self, addr: &str) -> Result<Description, ProviderError> {
        self.block_on(self.describe(addr))
            .unwrap_or_else(|| Err(self.router().err().expect("no router")))
    }
    /// `action` from a blocking thread.
    pub fn action_blocking(
        &self,
        addr: &str,
        name: &str,
        args: &JsonMap,
    ) -> Result<ActionOutput, ProviderError> {
        self.block_on(self.action(addr, name, args))
            .unwrap_or_else(|| Err(self.router().err().expect("no router")))
    }
}

/// "500ms", "2s", "1.5m", "1h", "1d" (a bare number is seconds); None for anything else.
/// The one duration parser: `timeouts`, and every duration attribute of the providers.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return None,
    };
    (secs.is_finite() && (0.0..=1e12).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

/// A duration as a stack writes it: "1s", "10m", "1h30m", "250ms".
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return if ms < 1000 {
            format!("{ms}ms")
        } else {
            format!("{}s", d.as_secs_f64())
        };
    }
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_as_written() {
        for (s, d) in [
            ("1s", Duration::from_secs(1)),
            ("10m", Duration::from_secs(600)),
            ("1h30m", Duration::ZERO),
            ("250ms", Duration::from_millis(250)),
            ("2h", Duration::from_secs(7200)),
        ] {
            if d.is_zero() {
                assert_eq!(parse_duration(s), None, "{s}");
                continue;
            }
            assert_eq!(parse_duration(s), Some(d), "{s}");
            assert_eq!(format_duration(d), s);
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        for bad in ["", "ten", "5 minutes", "-1s", "1y", "1e400"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_cancel_wakes_every_waiter_and_a_late_waiter_returns_at_once() {
        let t = CancelToken::new();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let t = t.clone();
                tokio::spawn(async move { t.cancelled().await })
            })
            .collect();
        tokio::task::yield_now().await;
        t.cancel();
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("woken")
                .unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), t.cancelled())
            .await
            .expect("already cancelled");
    }

    #[tokio::test]
    async fn a_step_past_its_deadline_names_the_address_the_operation_and_the_limit() {
        let step =
            Step::detached("service.web[0]").bounded(Op::Create, Some(Duration::from_millis(20)));
        assert!(step.check().is_ok());
        let e = step.sleep(Duration::from_secs(60)).await.unwrap_err();
        assert_eq!(
            e.message,
            "service.web[0]: create did not finish within 20ms (timeouts.create)"
        );
        assert_eq!(step.stopped(), Some(Stop::Deadline));
        step.cancel.cancel();
        assert_eq!(step.stopped(), Some(Stop::Cancelled));
    }
}
