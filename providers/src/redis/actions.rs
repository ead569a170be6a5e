//! Named actions of a flag store (`Provider::action`), what `pipeline flags` runs: `flags_list`,
//! `flag_get` (from the primary, or when it is down from the first mirror that answers, with a
//! warning) and `flag_set` (on the primary, then waits at most 2 s until every mirror shows it).
//! The store's addresses and password come from its record (`url`, `mirror_urls`).

use super::resp::{Conn, Error as RespError, Url};
use super::store::{self, FlagValue};
use anyhow::{anyhow, bail, Result};
use pipeline_engine::provider::{
    ActionOutput, ActionSchema, AttrSchema, JsonMap, ProviderError, Type,
};
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MIRROR_WAIT: Duration = Duration::from_secs(2);

pub fn schemas(kind: &str) -> Vec<ActionSchema> {
    if kind != "flags" {
        return Vec::new();
    }
    vec![
        ActionSchema {
            name: "flags_list",
            about: "every flag and its value",
            args: vec![],
            changes_record: false,
        },
        ActionSchema {
            name: "flag_get",
            about: "one flag's value",
            args: vec![AttrSchema::required("name", Type::String)],
            changes_record: false,
        },
        ActionSchema {
            name: "flag_set",
            about: "turn a flag on (for a share of requests) or off, and wait for every mirror",
            args: vec![
                AttrSchema::required("name", Type::String),
                AttrSchema::required("enabled", Type::Bool),
                AttrSchema::optional("percent", Type::Number),
            ],
            changes_record: false,
        },
    ]
}

/// A `flags` instance as recorded in the state.
struct Store {
    addr: String,
    primary: Url,
    mirrors: Vec<Url>,
}

impl Store {
    fn of(addr: &str, record: &JsonMap) -> Result<Store> {
        let primary = record.get("url").and_then(|v| v.as_str()).ok_or_else(|| {
            anyhow!("{addr}: no url is recorded yet\n  = help: `pipeline apply` starts it")
        })?;
        let primary =
            Url::parse(primary).map_err(|e| anyhow!("{addr}: the recorded url is bad: {e}"))?;
        let mirrors = record
            .get("mirror_urls")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().and_then(|u| Url::parse(u).ok()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Store {
            addr: addr.to_string(),
            primary,
            mirrors,
        })
    }
}

fn auth_error(st: &Store, e: &RespError) -> anyhow::Error {
    anyhow!(
        "{}: the primary at {} refused the password ({e}): the password in the state does not \
         match the running store\n  = help: if its password was changed by hand, change it back \
         (CONFIG SET requirepass); or make a new store with `pipeline apply -replace {}` (flags go \
         back to the seed values)",
        st.addr,
        st.primary,
        st.addr
    )
}

fn connect_primary(st: &Store) -> std::result::Result<Conn, RespError> {
    Conn::connect(&st.primary, CONNECT_TIMEOUT)
}

fn primary_down(st: &Store, e: &RespError) -> anyhow::Error {
    anyhow!(
        "{}: the primary at {} does not answer ({e})\n  = help: `pipeline plan` shows whether it \
         is gone; `pipeline apply` starts it again (mirrors keep serving the last values meanwhile)",
        st.addr,
        st.primary
    )
}

/// Where reads come from: the primary, or (when it is down) the first mirror that answers.
fn read_conn(st: &Store, warnings: &mut Vec<String>) -> Result<(Conn, String)> {
    match connect_primary(st) {
        Ok(c) => Ok((c, "primary".into())),
        Err(e) if e.is_auth() => Err(auth_error(st, &e)),
        Err(e) => {
            for (i, m) in st.mirrors.iter().enumerate() {
                match Conn::connect(m, CONNECT_TIMEOUT) {
                    Ok(c) => {
                        warnings.push(format!(
                            "{}: the primary at {} does not answer ({e}); showing \
                             mirror-{i} ({m}), which keeps the last values it received\n  = help: \
                             `pipeline apply` starts the primary again; `flags set` needs it",
                            st.addr, st.primary
                        ));
                        return Ok((c, format!("mirror-{i}")));
                    }
                    Err(me) if me.is_auth() => return Err(auth_error(st, &me)),
                    Err(_) => continue,
                }
            }
            Err(anyhow!(
                "{}: neither the primary at {} ({e}) nor any of its {} mirrors answers\n  = help: \
                 `pipeline plan` shows what is gone; `pipeline apply` starts it again",
                st.addr,
                st.primary,
                st.mirrors.len()
            ))
        }
    }
}

fn redis_err(st: &Store, e: RespError) -> anyhow::Error {
    if e.is_auth() {
        auth_error(st, &e)
    } else {
        anyhow!("{}: {e}", st.addr)
    }
}

fn check_name(name: &str) -> Result<()> {
    if !store::valid_name(name) {
        bail!(
            "{name:?} is not a flag name\n  = help: flag names are letters, digits, `_`, `-` and `.`"
        );
    }
    Ok(())
}

fn arg_name(args: &JsonMap) -> Result<String> {
    let name = args
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or_else(|| anyhow!("name the flag"))?;
    check_name(name)?;
    Ok(name.to_string())
}

/// Blocking: talks RESP to the store.
pub fn run(
    addr: &str,
    record: &JsonMap,
    name: &str,
    args: &JsonMap,
) -> Result<ActionOutput, ProviderError> {
    run_inner(addr, record, name, args).map_err(|e| ProviderError::new(format!("{e:#}")))
}

fn run_inner(addr: &str, record: &JsonMap, action: &str, args: &JsonMap) -> Result<ActionOutput> {
    let st = Store::of(addr, record)?;
    let mut warnings = Vec::new();
    let mut out = JsonMap::new();
    match action {
        "flags_list" => {
            let (mut c, source) = read_conn(&st, &mut warnings)?;
            let flags = store::list(&mut c).map_err(|e| redis_err(&st, e))?;
            let m: JsonMap = flags
                .iter()
                .map(|(n, v)| (n.clone(), v.to_json()))
                .collect();
            let described: JsonMap = flags
                .iter()
                .map(|(n, v)| (n.clone(), v.describe().into()))
                .collect();
            out.insert("source".into(), source.into());
            out.insert("flags".into(), m.into());
            out.insert("described".into(), described.into());
        }
        "flag_get" => {
            let name = arg_name(args)?;
            let (mut c, source) = read_conn(&st, &mut warnings)?;
            let Some(v) = store::get(&mut c, &name).map_err(|e| redis_err(&st, e))? else {
                let known = store::list(&mut c)
                    .map(|l| l.into_iter().map(|(n, _)| n).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default();
                bail!(
                    "there is no flag `{name}` in {}{}\n  = help: set it with `pipeline flags set {name} on`{}",
                    st.addr,
                    if source == "primary" { String::new() } else { format!(" ({source})") },
                    if known.is_empty() { String::new() } else { format!("; flags there: {known}") }
                );
            };
            out.insert("source".into(), source.into());
            out.insert("value".into(), v.to_json());
            out.insert("described".into(), v.describe().into());
        }
        "flag_set" => {
            let name = arg_name(args)?;
            let v = FlagValue {
                enabled: args
                    .get("enabled")
                    .and_then(|e| e.as_bool())
                    .unwrap_or(false),
                percent: args
                    .get("percent")
                    .and_then(|p| p.as_u64())
                    .map_or(100, |p| p.min(100) as u8),
            };
            let v = if v.enabled { v } else { FlagValue::OFF };
            // Connect to every mirror first, so the time measured is the flip alone.
            let mut mirrors: Vec<(usize, &Url, std::result::Result<Conn, RespError>)> = st
                .mirrors
                .iter()
                .enumerate()
                .map(|(i, m)| (i, m, Conn::connect(m, CONNECT_TIMEOUT)))
                .collect();
            let mut p = match connect_primary(&st) {
                Ok(c) => c,
                Err(e) if e.is_auth() => return Err(auth_error(&st, &e)),
                Err(e) => return Err(primary_down(&st, &e)),
            };
            let t0 = Instant::now();
            store::set(&mut p, &name, v).map_err(|e| redis_err(&st, e))?;
            let mut behind: Vec<String> = Vec::new();
            let mut pending: Vec<usize> = (0..mirrors.len()).collect();
            let mut last_err: std::collections::HashMap<usize, String> = Default::default();
            while !pending.is_empty() {
                pending.retain(|&k| {
                    let (_, _, c) = &mut mirrors[k];
                    match c {
                        Ok(c) => match store::get(c, &name) {
                            Ok(Some(got)) if got == v => false,
                            Ok(got) => {
                                last_err.insert(
                                    k,
                                    format!(
                                        "it still shows {}",
                                        got.map_or("no value".into(), |g| g.describe())
                                    ),
                                );
                                true
                            }
                            Err(e) => {
                                last_err.insert(k, e.to_string());
                                true
                            }
                        },
                        Err(e) => {
                            last_err.insert(k, format!("cannot connect: {e}"));
                            true
                        }
                    }
                });
                if pending.is_empty() || t0.elapsed() >= MIRROR_WAIT {
                    break;
                }
                // Reconnect mirrors that were not reachable, at a gentler pace.
                for &k in &pending {
                    if mirrors[k].2.is_err() {
                        std::thread::sleep(Duration::from_millis(20));
                        mirrors[k].2 = Conn::connect(mirrors[k].1, CONNECT_TIMEOUT);
                    }
                }
            }
            let took = t0.elapsed();
            for &k in &pending {
                let (i, m, _) = &mirrors[k];
                behind.push(format!(
                    "mirror-{i} ({m}): {}",
                    last_err.get(&k).cloned().unwrap_or_default()
                ));
            }
            let ms = took.as_secs_f64() * 1000.0;
            out.insert("described".into(), v.describe().into());
            out.insert("mirrors".into(), mirrors.len().into());
            out.insert("ms".into(), ms.into());
            if !behind.is_empty() {
                out.insert(
                    "error".into(),
                    format!(
                    "{}: {} of {} mirrors did not show {name} = {} within {} s:\n  {}\n  = help: \
                     instances that read those mirrors still see the old value; `pipeline plan` \
                     shows what is gone and `pipeline apply` starts it again",
                    st.addr,
                    behind.len(),
                    mirrors.len(),
                    v.describe(),
                    MIRROR_WAIT.as_secs(),
                    behind.join("\n  ")
                )
                    .into(),
                );
            }
        }
        _ => {
            return Err(anyhow!(
                "{}",
                pipeline_engine::provider::unknown_action(
                    "redis",
                    "flags",
                    addr,
                    action,
                    &schemas("flags")
                )
            ))
        }
    }
    Ok(ActionOutput {
        output: out,
        record: None,
        warnings,
    })
}
