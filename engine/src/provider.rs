//! The one trait through which the engine touches the world.

pub use crate::step::{Step, Timeouts};
use crate::value::{Value, ValueMap};
use async_trait::async_trait;
use std::path::PathBuf;
use std::sync::Arc;

pub type JsonMap = serde_json::Map<String, serde_json::Value>;

#[derive(Clone, Debug, PartialEq)]
pub enum Type {
    String,
    Number,
    Bool,
    List(Box<Type>),
    Map(Box<Type>),
    /// Any value, including objects of any shape (a reference to another resource, say).
    Any,
}

impl Type {
    pub fn name(&self) -> String {
        match self {
            Type::String => "string".into(),
            Type::Number => "number".into(),
            Type::Bool => "bool".into(),
            Type::List(t) => format!("list({})", t.name()),
            Type::Map(t) => format!("map({})", t.name()),
            Type::Any => "any".into(),
        }
    }

    /// Convert `v` to this type the way HCL does (numbers and bools become strings and back);
    /// Err names what was found.
    pub fn convert(&self, v: Value) -> Result<Value, String> {
        match (self, v) {
            (_, Value::Unknown) => Ok(Value::Unknown),
            (_, Value::Null) => Ok(Value::Null),
            (t, Value::Sensitive(v)) => t.convert(*v).map(|v| v.mark(true)),
            (Type::Any, v) => Ok(v),
            (Type::String, Value::String(s)) => Ok(Value::String(s)),
            (Type::String, Value::Number(n)) => Ok(Value::String(crate::value::format_number(n))),
            (Type::String, Value::Bool(b)) => Ok(Value::String(b.to_string())),
            (Type::Number, Value::Number(n)) => Ok(Value::Number(n)),
            (Type::Number, Value::String(s)) => s
                .trim()
                .parse()
                .map(Value::Number)
                .map_err(|_| format!("a number is required, found the string {s:?}")),
            (Type::Bool, Value::Bool(b)) => Ok(Value::Bool(b)),
            (Type::Bool, Value::String(s)) if s == "true" || s == "false" => {
                Ok(Value::Bool(s == "true"))
            }
            (Type::List(t), Value::List(l)) => l
                .into_iter()
                .enumerate()
                .map(|(i, v)| t.convert(v).map_err(|e| format!("element {i}: {e}")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::List),
            (Type::Map(t), Value::Map(m)) => m
                .into_iter()
                .map(|(k, v)| {
                    t.convert(v)
                        .map(|v| (k.clone(), v))
                        .map_err(|e| format!("key \"{k}\": {e}"))
                })
                .collect::<Result<ValueMap, _>>()
                .map(Value::Map),
            (t, v) => Err(format!(
                "{} {} is required, found {} {}",
                article(&t.name()),
                t.name(),
                article(v.type_name()),
                v.type_name()
            )),
        }
    }
}

fn article(s: &str) -> &'static str {
    if s.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

#[derive(Clone, Debug)]
pub struct AttrSchema {
    pub name: &'static str,
    pub ty: Type,
    pub required: bool,
    /// Set by the provider (a port, a URL); may not be written in the stack unless also `optional`.
    pub computed: bool,
    pub optional: bool,
    /// A change replaces the resource instead of updating it in place.
    pub force_new: bool,
    pub sensitive: bool,
    /// For a computed attribute: the inputs its value is derived from, so it is sensitive when
    /// one of them is. None (the default, and the safe one): from every input.
    pub derived_from: Option<&'static [&'static str]>,
    pub default: Option<Value>,
    /// What the value (or parts of it) may look like: checked while planning, at the value's
    /// location, because the provider renders it into a file or a command line.
    pub formats: Vec<crate::format::Rule>,
}

impl AttrSchema {
    fn base(name: &'static str, ty: Type) -> Self {
        AttrSchema {
            name,
            ty,
            required: false,
            computed: false,
            optional: false,
            force_new: false,
            sensitive: false,
            derived_from: None,
            default: None,
            formats: Vec::new(),
        }
    }
    pub fn required(name: &'static str, ty: Type) -> Self {
        AttrSchema {
            required: true,
            ..Self::base(name, ty)
        }
    }
    pub fn optional(name: &'static str, ty: Type) -> Self {
        AttrSchema {
            optional: true,
            ..Self::base(name, ty)
        }
    }
    pub fn computed(name: &'static str, ty: Type) -> Self {
        AttrSchema {
            computed: true,
            ..Self::base(name, ty)
        }
    }
    pub fn force_new(mut self) -> Self {
        self.force_new = true;
        self
    }
    pub fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }
    /// A computed value derived only from these inputs (`&[]`: from none, e.g. a picked port).
    pub fn derived_from(mut self, inputs: &'static [&'static str]) -> Self {
        self.derived_from = Some(inputs);
        self
    }
    /// Whether this computed attribute carries a secret of `config` (see `derived_from`).
    pub fn derives_secret(&self, config: &ValueMap) -> bool {
        self.computed
            && match self.derived_from {
                None => config.values().any(Value::is_sensitive),
                Some(inputs) => inputs
                    .iter()
                    .any(|i| config.get(*i).is_some_and(Value::is_sensitive)),
            }
    }
    pub fn default(mut self, v: Value) -> Self {
        self.default = Some(v);
        self
    }
    /// The value must have `format` (each element of a list, each value of a map: use `format_at`).
    pub fn format(self, format: crate::format::Format) -> Self {
        self.format_at("", format)
    }
    /// Part of the value must have `format`: `at` is `"*"` (every element or value), `"{}"` (every
    /// key of a map), a field name, or a dotted path of those (`"*.upstreams.*.weight"`).
    pub fn format_at(mut self, at: &'static str, format: crate::format::Format) -> Self {
        self.formats.push(crate::format::Rule { at, format });
        self
    }
    pub fn settable(&self) -> bool {
        !self.computed || self.optional
    }
}

#[derive(Clone, Debug)]
pub struct KindSchema {
    pub kind: &'static str,
    pub attrs: Vec<AttrSchema>,
    /// An attribute that works like `count` (a service's `replicas`): one instance per replica.
    pub instances_attr: Option<&'static str>,
}

impl KindSchema {
    pub fn attr(&self, name: &str) -> Option<&AttrSchema> {
        self.attrs.iter().find(|a| a.name == name)
    }
}

/// A rollout policy for in-place updates of a block's instances.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    /// Instances updated at once; the rest wait their turn. A failure stops the rollout, and
    /// the instances it already updated are rolled back.
    pub parallel: usize,
    /// Stage every instance first and switch them together only if all staged (blue-green).
    pub two_phase: bool,
    /// Two-phase, and between staging and switching the provider's `analyze` watches the staged
    /// versions take a growing share of the traffic (a progressive canary); it decides whether
    /// they are switched (promoted) or stopped (aborted).
    pub progressive: bool,
    /// How an update rolls out, in words, for the plan (e.g. the canary's steps).
    pub describe: Option<String>,
}

/// One instance of a block whose update is staged, for `Provider::analyze`.
#[derive(Clone, Debug)]
pub struct Staged {
    pub addr: String,
    /// What runs now (recorded).
    pub prior: JsonMap,
    /// What `stage` prepared.
    pub staged: JsonMap,
}

/// Why a progressive rollout stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct Aborted {
    /// The candidate's share of traffic (percent) when it was stopped.
    pub step: u32,
    pub reason: String,
}

/// Live progress lines from a long provider step (a canary's steps and figures).
pub type Progress = std::sync::Arc<dyn Fn(Note) + Send + Sync>;

/// What a long step reports while it runs: a line for the user, or a file it wrote that the
/// caller may render (typed, so no caller recognises it by its words).
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    Line(String),
    Artifact { kind: ArtifactKind, path: PathBuf },
}

/// What kind of file a step wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    /// A progressive canary's evidence (JSON), which the CLI renders as an HTML report.
    CanaryRecord,
}

impl ArtifactKind {
    /// In words: "canary evidence".
    pub fn name(self) -> &'static str {
        match self {
            ArtifactKind::CanaryRecord => "canary evidence",
        }
    }
}

impl From<String> for Note {
    fn from(line: String) -> Note {
        Note::Line(line)
    }
}

/// Where providers keep what they run and build, and how to re-invoke this binary.
#[derive(Clone, Debug)]
pub struct ProviderCtx {
    /// `.pipeline/` of the working directory.
    pub work_dir: PathBuf,
    /// Directory of the root stack file; relative paths in the stack are relative to it.
    pub stack_dir: PathBuf,
    /// The `pipeline` binary, for detached helpers (the replica supervisor).
    pub exe: PathBuf,
}

/// A configuration value a provider rejects, with the attribute it is about and what to write instead.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub attr: Option<String>,
    pub message: String,
    pub help: String,
}

impl Invalid {
    pub fn new(attr: Option<&str>, message: impl Into<String>, help: impl Into<String>) -> Self {
        Invalid {
            attr: attr.map(str::to_string),
            message: message.into(),
            help: help.into(),
        }
    }
}

/// What kind of failure a provider reports: the engine decides on retries by this, never by
/// the words of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorKind {
    /// The configuration cannot work as written; fix the stack.
    InvalidConfig,
    /// What the call is about does not exist (any more).
    NotFound,
    /// The host or endpoint did not answer.
    Unreachable,
    /// Credentials are missing, wrong or not allowed to do this.
    Authentication,
    /// The other side asks to slow down: retried, with longer waits.
    Throttled,
    /// A passing failure: retried.
    Transient,
    /// Anything else: not retried. The default, so an error says it is retryable on purpose.
    #[default]
    Fatal,
}

impl ErrorKind {
    /// Whether the engine tries the call again.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorKind::Throttled | ErrorKind::Transient)
    }
    /// In words, for reports ("after a transient error").
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidConfig => "invalid configuration",
            ErrorKind::NotFound => "not found",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Authentication => "authentication",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Transient => "transient",
            ErrorKind::Fatal => "fatal",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderError {
    pub kind: ErrorKind,
    pub message: String,
    pub help: Option<String>,
    /// The stack attribute the error is about, when there is one: a plan error points at it.
    pub attr: Option<String>,
    /// What failed, as data, when the provider knows: callers decide by this (and `kind`),
    /// never by the words of `message`. Boxed: errors travel in every `Result`.
    pub cause: Option<Box<Cause>>,
    /// An update that failed part-way, when the provider knows what exists now (the hosts a
    /// rolling update had already moved): the engine records it, so the state says what runs
    /// until the next apply converges the rest. None: the prior record stands.
    pub partial: Option<Box<JsonMap>>,
}

/// Why a service did not come up, in terms every provider that builds and runs an app can
/// report (a local process, one over SSH, a Kubernetes pod), so that advice is chosen by data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum Cause {
    /// The build command ended unsuccessfully.
    Build {
        command: String,
        /// How it ended: "exit status: 1".
        status: String,
        /// Its last lines of output.
        output: Vec<String>,
    },
    /// The app exited before its health check passed.
    ExitedBeforeHealthy {
        /// "exited with status 3".
        how: String,
        /// The app's own last output (no lines of whatever supervises it).
        output: Vec<String>,
    },
    /// The app kept running but its health check did not pass in time.
    NeverHealthy {
        /// How long it was given: "3s".
        after: String,
        /// What the last check saw: "connection refused".
        last_check: String,
        /// The app's own last output.
        output: Vec<String>,
    },
    /// The step's deadline (`timeouts.OP`) passed: the message names the address and the limit.
    Deadline,
}

impl ProviderError {
    /// A fatal error (not retried); `with_kind` or the named constructors say otherwise.
    pub fn new(message: impl Into<String>) -> Self {
        ProviderError {
            kind: ErrorKind::Fatal,
            message: message.into(),
            help: None,
            attr: None,
            cause: None,
            partial: None,
        }
    }
    /// The same error (kind, cause, help) in other words: for a caller that adds context.
    pub fn map_message(mut self, f: impl FnOnce(String) -> String) -> Self {
        self.message = f(std::mem::take(&mut self.message));
        self
    }
    /// What failed, as data.
    pub fn cause(mut self, cause: Cause) -> Self {
        self.cause = Some(Box::new(cause));
        self
    }
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(message).with_kind(ErrorKind::InvalidConfig)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(message).with_kind(ErrorKind::NotFound)
    }
    pub fn unreachable(message: impl Into<String>) -> Self {
        Self::new(message).with_kind(ErrorKind::Unreachable)
    }
    pub fn authentication(message: impl Into<String>) -> Self {
        Self::new(message).with_kind(ErrorKind::Authentication)
    }
    pub fn throttled(message: impl Into<String>) -> Self {
        Self::new(message).with_kind(ErrorKind::Throttled)
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(message).with_kind(ErrorKind::Transient)
    }
    /// What exists now after an update that failed part-way (see `partial`).
    pub fn partial(mut self, record: JsonMap) -> Self {
        self.partial = Some(Box::new(record));
        self
    }
    /// The error is about this stack attribute.
    pub fn attr(mut self, attr: &str) -> Self {
        self.attr = Some(attr.to_string());
        self
    }
    pub fn help(mut self, h: impl Into<String>) -> Self {
        self.help = Some(h.into());
        self
    }
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.help {
            write!(f, "\n  = help: {h}")?;
        }
        Ok(())
    }
}

pub struct PlanRequest<'a> {
    pub kind: &'a str,
    pub addr: &'a str,
    /// Evaluated configuration; may contain unknown values.
    pub config: &'a ValueMap,
    /// What state (refreshed) says exists now.
    pub prior: Option<&'a JsonMap>,
}

pub struct Planned {
    /// Config plus computed attributes: known where derivable without side effects, else Unknown.
    pub object: ValueMap,
    /// Attributes whose change the provider says needs a replacement, beyond `force_new` ones.
    pub requires_replace: Vec<String>,
}

/// What applying a planned change would do on one machine it touches, as the provider's own
/// dry run shows it (ansible's `--check --diff` for remote hosts): a summary line and a unified
/// diff of the files it would change. Never the content of a secret file.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TargetPreview {
    /// The machine (an inventory host's name).
    pub target: String,
    /// One line: "2 changed", "no change", "pipeline-app-0.service would restart".
    pub summary: String,
    /// Unified diff lines; empty when nothing would change.
    #[serde(default)]
    pub diff: String,
}

pub struct ApplyRequest<'a> {
    pub kind: &'a str,
    pub addr: &'a str,
    /// Fully known configuration plus the planned computed values that were known.
    pub config: &'a ValueMap,
    /// None: create. Some: update in place.
    pub prior: Option<&'a JsonMap>,
}

#[async_trait]
pub trait Provider: Send + Sync {
    fn name(&self) -> &'static str;
    fn kinds(&self) -> Vec<KindSchema>;
    /// Check values the schema cannot (a port range, an exclusive pair).
    fn validate(&self, _kind: &str, _config: &ValueMap) -> Vec<Invalid> {
        Vec::new()
    }
    /// Pure: never changes anything outside the process.
    fn plan(&self, ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError>;
    /// What exists now for a recorded instance; None when it is gone.
    async fn read(
        &self,
        ctx: &ProviderCtx,
        kind: &str,
        addr: &str,
        prior: &JsonMap,
    ) -> Result<Option<JsonMap>, ProviderError>;
    /// `step` carries the cancel, the deadline (`timeouts.create` or `.update`) and progress.
    async fn apply(
        &self,
        ctx: &ProviderCtx,
        req: &ApplyRequest<'_>,
        step: &Step,
    ) -> Result<JsonMap, ProviderError>;
    /// A dry run of a planned create or update on the machines it touches, per machine, for
    /// the plan to show (`req.config` is the planned object, possibly with unknown values;
    /// `req.prior` the refreshed record). Read-only: nothing changes anywhere. Called only when
    /// a plan is shown for review (`pipeline plan`, `apply` without `-auto-approve`). Default:
    /// nothing to show.
    async fn preview(
        &self,
        _ctx: &ProviderCtx,
        _req: &PlanRequest<'_>,
    ) -> Result<Vec<TargetPreview>, ProviderError> {
        Ok(Vec::new())
    }
    /// How updates of a block's instances roll out (rolling, blue-green); None: all at once.
    fn rollout(&self, _kind: &str, _config: &ValueMap) -> Option<Rollout> {
        None
    }
    /// Two-phase updates (blue-green), phase one: prepare the new version without switching.
    async fn stage(
        &self,
        ctx: &ProviderCtx,
        req: &ApplyRequest<'_>,
        step: &Step,
    ) -> Result<JsonMap, ProviderError> {
        self.apply(ctx, req, step).await
    }
    /// Phase two: switch to what `stage` prepared.
    async fn commit(
        &self,
        _ctx: &ProviderCtx,
        _kind: &str,
        _addr: &str,
        staged: &JsonMap,
        _step: &Step,
    ) -> Result<JsonMap, ProviderError> {
        Ok(staged.clone())
    }
    /// Another instance failed to stage: undo what `stage` prepared; the old version stays.
    async fn abort(
        &self,
        _ctx: &ProviderCtx,
        _kind: &str,
        _addr: &str,
        _staged: &JsonMap,
        _step: &Step,
    ) -> Result<(), ProviderError> {
        Ok(())
    }
    /// Progressive rollouts: every instance of `block` is staged; shift traffic to the staged
    /// versions step by step and judge them. Ok: promote (the engine commits every instance).
    /// Err: abort (the engine aborts every instance); by then the staged versions get no traffic.
    /// `step.cancel` is set on Ctrl-C: stop soon, as an abort; `step.progress` takes the
    /// canary's live lines.
    async fn analyze(
        &self,
        _ctx: &ProviderCtx,
        _kind: &str,
        _block: &str,
        _config: &ValueMap,
        _members: &[Staged],
        _step: &Step,
    ) -> Result<(), Aborted> {
        Ok(())
    }
    /// Stop what this provider started under `ctx.work_dir` that no record in `owned` (this
    /// provider's records in the state) accounts for: processes, run directories, namespaces,
    /// shifted configs left by a crashed or concurrent run. Called under the state lock at the
    /// start of apply and by destroy; returns one line per thing it stopped, for the report.
    async fn sweep(
        &self,
        _ctx: &ProviderCtx,
        _owned: &[(&str, &crate::state::ResourceState)],
    ) -> Result<Vec<String>, ProviderError> {
        Ok(Vec::new())
    }
    /// Must also clean up a half-created instance (a crash between start and record).
    async fn delete(
        &self,
        ctx: &ProviderCtx,
        kind: &str,
        addr: &str,
        prior: &JsonMap,
        step: &Step,
    ) -> Result<(), ProviderError>;
    /// The settings a `provider "NAME" { ... }` block may hold, typed and checked like a kind's
    /// attributes (required, defaults, formats, sensitive). Empty: the provider takes none.
    fn config_schema(&self) -> Vec<AttrSchema> {
        Vec::new()
    }
    /// Called once per run, before anything is read or planned, with the evaluated settings of
    /// one configuration (a block, or nothing for a provider used without one: then `config`
    /// holds only the schema's defaults). `Ok(Some(p))`: the engine uses `p` for every resource
    /// bound to this configuration; `Ok(None)`: this instance needs no configuration and is used
    /// as it is. Credentials a block omits come from the provider's standard sources
    /// (environment, files); never from state. An `Invalid` with an `attr` names the setting
    /// that is wrong or missing; its help says what to write.
    fn configure(&self, _config: &ValueMap) -> Result<Option<Arc<dyn Provider>>, Vec<Invalid>> {
        Ok(None)
    }
    /// `configure` with the directory of the root stack, against which relative paths in the
    /// settings are resolved (an inventory file). Default: `configure`, for providers whose
    /// settings hold no relative paths.
    fn configure_in(
        &self,
        _stack_dir: &std::path::Path,
        config: &ValueMap,
    ) -> Result<Option<Arc<dyn Provider>>, Vec<Invalid>> {
        self.configure(config)
    }
    /// The attribute of a `kind` block that makes the provider expand it into instances (an
    /// inventory group into its hosts), or None: the block expands by `count` or `for_each`
    /// only. The engine evaluates the attribute in the block's scope; it must be known when
    /// planning, and a block with it may have neither `count` nor `for_each`.
    fn expansion(&self, _kind: &str) -> Option<&'static str> {
        None
    }
    /// The instances of a block whose `expansion` attribute has `value`, in order: each one's
    /// key (`host.web["web01"]`) and its `each.value`. Called on the configured instance, once
    /// per plan. An error is reported at the attribute (`attr` is ignored).
    fn expand(&self, kind: &str, _value: &Value) -> Result<Vec<(String, Value)>, ProviderError> {
        Err(ProviderError::new(format!(
            "the {} provider does not expand {kind} blocks",
            self.name()
        )))
    }
    /// How long create, update and delete of `kind` may take when a block sets no `timeouts`
    /// (None: unbounded). The engine stops a step at its deadline either way.
    fn default_timeouts(&self, _kind: &str) -> Timeouts {
        Timeouts::default()
    }
    /// What runs for a recorded instance (`record`: its recorded attributes): its processes,
    /// endpoints, health, where its logs are and where its metrics come from. Read-only; what
    /// `status`, `logs`, the monitor and the canary's sampler show. Default: nothing runs (a
    /// file, a host).
    async fn describe(
        &self,
        _ctx: &ProviderCtx,
        _kind: &str,
        _addr: &str,
        _record: &JsonMap,
    ) -> Result<Description, ProviderError> {
        Ok(Description::default())
    }
    /// The named actions `action` runs for instances of `kind` (rollback, promote, flag get/set).
    fn actions(&self, _kind: &str) -> Vec<ActionSchema> {
        Vec::new()
    }
    /// Run the named action on a recorded instance. The caller holds the state lock when the
    /// action's schema says it changes the record, and journals `ActionOutput::record`.
    #[allow(clippy::too_many_arguments)]
    async fn action(
        &self,
        _ctx: &ProviderCtx,
        kind: &str,
        addr: &str,
        _record: &JsonMap,
        name: &str,
        _args: &JsonMap,
    ) -> Result<ActionOutput, ProviderError> {
        Err(unknown_action(
            self.name(),
            kind,
            addr,
            name,
            &self.actions(kind),
        ))
    }
}

/// The providers known to this binary, and which kinds each serves.
#[derive(Clone, Default)]
pub struct Registry {
    providers: Vec<Arc<dyn Provider>>,
    kinds: Vec<(String, Vec<(String, KindSchema)>)>,
    /// After `configure`: the instance of every configuration used this run, keyed `NAME` or
    /// `NAME.ALIAS`. None: not configured; lookups answer the registered (default) instances.
    configured: Option<Vec<(String, Arc<dyn Provider>)>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("providers", &self.provider_names())
            .field("configured", &self.configured_keys())
            .finish()
    }
}

/// The provider name of a configuration key: `local` of `local.west`.
pub fn provider_name(key: &str) -> &str {
    key.split_once('.').map_or(key, |(n, _)| n)
}

impl Registry {
    pub fn add(&mut self, p: Arc<dyn Provider>) {
        for k in p.kinds() {
            let name = k.kind.to_string();
            match self.kinds.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push((p.name().to_string(), k)),
                None => self.kinds.push((name, vec![(p.name().to_string(), k)])),
            }
        }
        self.providers.push(p);
    }
    /// The instance for a configuration key (`local`, `local.west`). A configured registry
    /// answers only the configurations it was given; an unconfigured one answers plain names with
    /// the registered instances.
    pub fn provider(&self, key: &str) -> Option<&Arc<dyn Provider>> {
        match &self.configured {
            Some(c) => c.iter().find(|(k, _)| k == key).map(|(_, p)| p),
            None => self.registered(key),
        }
    }
    /// The registered (unconfigured) instance of a provider.
    pub fn registered(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.providers.iter().find(|p| p.name() == name)
    }
    /// Names of every registered provider, in registration order.
    pub fn provider_names(&self) -> Vec<&'static str> {
        self.providers.iter().map(|p| p.name()).collect()
    }
    /// This registry with the configured instances `configure` made (keys `NAME[.ALIAS]`).
    pub fn with_configured(&self, instances: Vec<(String, Arc<dyn Provider>)>) -> Registry {
        Registry {
            configured: Some(instances),
            ..self.clone()
        }
    }
    /// The configuration keys this registry was configured with (empty when unconfigured).
    pub fn configured_keys(&self) -> Vec<&str> {
        self.configured
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect()
    }
    pub fn kind_names(&self) -> Vec<&str> {
        self.kinds.iter().map(|(k, _)| k.as_str()).collect()
    }
    pub fn is_kind(&self, kind: &str) -> bool {
        self.kinds.iter().any(|(k, _)| k == kind)
    }
    /// (provider, schema) for a kind; the first registered provider is the default.
    /// `provider` may be a configuration key (`local.west`): its provider's schema.
    pub fn schema(&self, kind: &str, provider: Option<&str>) -> Option<(&str, &KindSchema)> {
        let (_, v) = self.kinds.iter().find(|(k, _)| k == kind)?;
        match provider.map(provider_name) {
            None => v.first().map(|(p, s)| (p.as_str(), s)),
            Some(want) => v
                .iter()
                .find(|(p, _)| p == want)
                .map(|(p, s)| (p.as_str(), s)),
        }
    }
    pub fn providers_of(&self, kind: &str) -> Vec<&str> {
        self.kinds
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, v)| v.iter().map(|(p, _)| p.as_str()).collect())
            .unwrap_or_default()
    }
}

impl Registry {
    /// The provider that recorded `rs` (its `provider` field), for `describe` and `action`.
    pub fn provider_of(&self, rs: &crate::state::ResourceState) -> Option<&Arc<dyn Provider>> {
        self.provider(&rs.provider).or_else(|| {
            self.schema(&rs.kind, None)
                .and_then(|(p, _)| self.provider(p))
        })
    }
}

/// Health of a described instance, as `status` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Runs and passes its check.
    Healthy,
    /// Runs, fails its check.
    Unhealthy,
    /// Runs, not checked yet.
    Starting,
    /// Not running (or not answering at all).
    Down,
    /// Nothing to check, or it cannot be known from here.
    #[default]
    Unknown,
}

impl HealthState {
    pub fn name(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
            HealthState::Starting => "starting",
            HealthState::Down => "down",
            HealthState::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Health {
    pub state: HealthState,
    /// Why it is not healthy (the check's error, "its supervisor is not running").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Health {
    pub fn new(state: HealthState, reason: Option<String>) -> Self {
        Health { state, reason }
    }
}

/// One process of an instance.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProcessInfo {
    /// What it is for the instance: `app`, `slot`, `nginx`, `primary`, `mirror-0`, `daemon`,
    /// `candidate` (a canary's new version while it is judged).
    pub role: String,
    pub pid: Option<u32>,
    /// Where it runs: None is this machine; otherwise a host name (an SSH host, a pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub running: bool,
    /// Its last health check: None when none was made yet.
    pub healthy: Option<bool>,
    /// Unix seconds.
    pub started_at: Option<u64>,
    pub restarts: u32,
    pub port: Option<u16>,
    /// What its supervisor says (`running`, `backoff`, `gone`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<String>,
    /// The version it runs (a service's generation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The systemd unit it runs as (`pipeline-web-0.service`), when it has one: a
    /// `MetricSource::RemoteUsage` of its host samples it by that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Output lost because its log could not be written, and why (while it lasts).
    #[serde(default)]
    pub log_dropped_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_error: Option<String>,
}

/// An address the instance serves at.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    /// `serve` (what clients use), `health` (what a probe asks), `primary`, `mirror-0`.
    pub role: String,
    /// `http://host:port/path`, `tcp://host:port`, `redis://host:port`.
    pub url: String,
    /// The password a probe needs (a flag store's), when there is one: never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// For an HTTP health endpoint: the status that counts as healthy (None: any below 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
}

/// Where one process's output can be read.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogSource {
    /// A file on this machine.
    File { role: String, path: PathBuf },
    /// A command whose output is the log (`kubectl logs POD`, `ssh HOST journalctl -u UNIT`).
    Command { role: String, argv: Vec<String> },
    /// Elsewhere, readable only by the provider (`action "logs"`): what it is, in words.
    Remote { role: String, what: String },
}

impl LogSource {
    pub fn role(&self) -> &str {
        match self {
            LogSource::File { role, .. }
            | LogSource::Command { role, .. }
            | LogSource::Remote { role, .. } => role,
        }
    }
}

/// Where figures about the instance come from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetricSource {
    /// An access log of its requests; `format` names the line format (`nginx-timed`: `$msec
    /// $status $request_time $upstream_addr $upstream_status`).
    AccessLog { path: PathBuf, format: String },
    /// An access log on another machine: `argv` writes the lines logged from the moment it
    /// starts to its standard output, until it is killed (`ssh HOST tail -n0 -F PATH`).
    AccessLogStream { argv: Vec<String>, format: String },
    /// A process tree to sample in /proc (CPU, memory): the root and its descendants.
    Procfs {
        role: String,
        pid: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
    },
    /// CPU and memory of another machine and of systemd units on it: `argv` runs one shell
    /// command line there when that line is appended as its last argument (`ssh OPTS -- ADDR`).
    /// The monitor appends its own sampling command for all the units of a host at once, so a
    /// host is asked once per sample whatever number of instances run on it.
    RemoteUsage {
        /// The machine's name (an inventory host): what the monitor shows and groups by.
        host: String,
        argv: Vec<String>,
        /// Unit names (`pipeline-web-0.service`), as the processes' `unit` names them.
        units: Vec<String>,
    },
    /// A metrics endpoint (Prometheus text).
    Url { url: String },
}

/// What an instance is for the others, as far as watching it goes: the monitor sorts what it
/// watches by this (replicas, balancers, stores), never by kind names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Serves {
    /// Nothing to watch (a file, a host).
    #[default]
    Nothing,
    /// One replica of an application: probed, its processes sampled, grouped by block.
    App,
    /// Passes requests on to other instances (a load balancer): probed without sending a
    /// request (that would count as traffic); its access log tells the others' rates.
    Proxy,
    /// Keeps data for others (a flag store): probed in its own protocol.
    Store,
    /// Watches the others (a monitor): not a target itself.
    Observer,
}

/// What runs for one recorded instance (`Provider::describe`). Plain data: it holds nothing a
/// local machine alone would have (a log may be a command or remote, a process has a host).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Description {
    /// What the instance is for the others (the monitor's replicas, balancers, stores).
    #[serde(default)]
    pub serves: Serves,
    /// The processes, the main one first; empty when nothing runs (a file, a host).
    pub processes: Vec<ProcessInfo>,
    pub endpoints: Vec<Endpoint>,
    /// Of the instance as a whole.
    pub health: Health,
    pub logs: Vec<LogSource>,
    pub metrics: Vec<MetricSource>,
}

impl Description {
    /// The main process (the first that is not a candidate).
    pub fn main(&self) -> Option<&ProcessInfo> {
        self.processes.iter().find(|p| p.role != "candidate")
    }
    pub fn endpoint(&self, role: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.role == role)
    }
    /// What a probe asks: the `health` endpoint, else the `serve` one.
    pub fn probe_endpoint(&self) -> Option<&Endpoint> {
        self.endpoint("health").or_else(|| self.endpoint("serve"))
    }
    /// The access log of its requests, when it keeps one.
    pub fn access_log(&self) -> Option<&std::path::Path> {
        self.metrics.iter().find_map(|m| match m {
            MetricSource::AccessLog { path, .. } => Some(path.as_path()),
            _ => None,
        })
    }
    /// The process trees to sample in /proc: (role, root pid).
    pub fn procfs_roots(&self) -> impl Iterator<Item = (&str, u32)> + '_ {
        self.metrics.iter().filter_map(|m| match m {
            MetricSource::Procfs { role, pid, .. } => Some((role.as_str(), *pid)),
            _ => None,
        })
    }
}

/// One named action of a kind (`Provider::actions`).
#[derive(Clone, Debug)]
pub struct ActionSchema {
    pub name: &'static str,
    /// One line, for help and errors.
    pub about: &'static str,
    pub args: Vec<AttrSchema>,
    /// It changes the instance's record (the caller takes the lock and journals the result).
    pub changes_record: bool,
}

/// The action of a kind whose instances are hosts of an inventory (`pipeline inventory` asks
/// every recorded instance's provider for it): no arguments; its output holds the host's
/// `name`, `address`, and when known `port`, `user`, `key_file`, `become`, `groups`.
pub const INVENTORY_HOST_ACTION: &str = "inventory_host";

/// What an action answered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActionOutput {
    /// The answer, for the CLI to render.
    pub output: JsonMap,
    /// The instance's new recorded attributes, when the action changed them.
    pub record: Option<JsonMap>,
    /// Things to tell the operator on stderr (a store answering from a mirror).
    pub warnings: Vec<String>,
}

impl ActionOutput {
    pub fn output(output: JsonMap) -> Self {
        ActionOutput {
            output,
            ..Default::default()
        }
    }
}

/// The error of an action a provider does not have, naming the ones it has.
pub fn unknown_action(
    provider: &str,
    kind: &str,
    addr: &str,
    name: &str,
    have: &[ActionSchema],
) -> ProviderError {
    let names: Vec<&str> = have.iter().map(|a| a.name).collect();
    ProviderError::invalid_config(format!(
        "{addr}: the {provider} provider has no action `{name}` for {kind}"
    ))
    .help(if names.is_empty() {
        format!("{kind} has no actions")
    } else {
        format!("{kind} has: {}", names.join(", "))
    })
}
