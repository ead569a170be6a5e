//! `pipeline flags`: read and flip feature flags in a `flags` store (redis provider).
//!
//! The store's addresses and password come from the recorded state (`url`, `mirror_urls` of a
//! `flags` instance). Writes go to the primary; `set` then waits (at most 2 s) until every
//! mirror shows the new value and says how long that took. Reads go to the primary; when the
//! primary does not answer, `get` and `list` say so on stderr and show what the first mirror
//! that answers has (the last values it received), so an outage does not hide the flags.

use crate::ops::Workspace;
use crate::render::Style;
use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use pipeline_providers::redis::resp::{Conn, Error as RespError, Url};
use pipeline_providers::redis::store::{self, FlagValue};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MIRROR_WAIT: Duration = Duration::from_secs(2);

#[derive(Args, Clone, Default)]
pub struct StoreArg {
    /// The `flags` store to use (`flags.ui` or `ui`) when the state has several.
    #[arg(long, value_name = "ADDR")]
    store: Option<String>,
}

#[derive(Subcommand)]
pub enum FlagsCmd {
    /// Every flag and its value.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// One flag's value.
    Get {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Turn a flag on or off on the primary, then wait until every mirror shows it.
    Set {
        name: String,
        value: OnOff,
        /// With `on`: the share of requests (0-100) that see the flag on.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: Option<u8>,
        #[command(flatten)]
        store: StoreArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// A `flags` instance as recorded in the state.
struct Store {
    addr: String,
    primary: Url,
    mirrors: Vec<Url>,
}

fn stores(ws: &Workspace) -> Result<Vec<Store>> {
    let state = ws.state()?;
    let mut out = Vec::new();
    for (addr, rs) in &state.resources {
        if rs.kind != "flags" {
            continue;
        }
        let Some(primary) = rs.attrs.get("url").and_then(|v| v.as_str()) else {
            continue;
        };
        let primary =
            Url::parse(primary).map_err(|e| anyhow!("{addr}: the recorded url is bad: {e}"))?;
        let mirrors = rs
            .attrs
            .get("mirror_urls")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().and_then(|u| Url::parse(u).ok()))
                    .collect()
            })
            .unwrap_or_default();
        out.push(Store {
            addr: addr.clone(),
            primary,
            mirrors,
        });
    }
    Ok(out)
}

fn pick(ws: &Workspace, arg: &StoreArg) -> Result<Store> {
    let mut all = stores(ws)?;
    let names = |all: &[Store]| {
        all.iter()
            .map(|s| s.addr.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match &arg.store {
        Some(want) => {
            let full = if want.starts_with("flags.") {
                want.clone()
            } else {
                format!("flags.{want}")
            };
            match all.iter().position(|s| s.addr == full || s.addr == *want) {
                Some(i) => Ok(all.swap_remove(i)),
                None if all.is_empty() => bail!(no_store(ws)),
                None => bail!(
                    "there is no flags store {want} in the state\n  = help: the state has {}",
                    names(&all)
                ),
            }
        }
        None => match all.len() {
            0 => bail!(no_store(ws)),
            1 => Ok(all.remove(0)),
            _ => bail!(
                "the state has {} flags stores: {}\n  = help: pick one with --store, e.g. `--store {}`",
                all.len(),
                names(&all),
                all[0].addr
            ),
        },
    }
}

fn no_store(ws: &Workspace) -> String {
    format!(
        "there is no flags store in the state ({})\n  = help: declare one in the stack, e.g. \
         `flags \"ui\" {{ values = {{ tables = true }} }}`, and run `pipeline apply`",
        ws.dir.display()
    )
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
fn read_conn(st: &Store) -> Result<(Conn, String)> {
    match connect_primary(st) {
        Ok(c) => Ok((c, "primary".into())),
        Err(e) if e.is_auth() => Err(auth_error(st, &e)),
        Err(e) => {
            for (i, m) in st.mirrors.iter().enumerate() {
                match Conn::connect(m, CONNECT_TIMEOUT) {
                    Ok(c) => {
                        eprintln!(
                            "warning: {}: the primary at {} does not answer ({e}); showing \
                             mirror-{i} ({m}), which keeps the last values it received\n  = help: \
                             `pipeline apply` starts the primary again; `flags set` needs it",
                            st.addr, st.primary
                        );
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

pub async fn run(ws: &Workspace, cmd: FlagsCmd, _style: Style) -> Result<ExitCode> {
    match cmd {
        FlagsCmd::List { json, store: arg } => {
            let st = pick(ws, &arg)?;
            let (mut c, source) = read_conn(&st)?;
            let flags = store::list(&mut c).map_err(|e| redis_err(&st, e))?;
            if json {
                let m: serde_json::Map<String, serde_json::Value> = flags
                    .iter()
                    .map(|(n, v)| (n.clone(), v.to_json()))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"store": st.addr, "source": source, "flags": m})
                );
            } else if flags.is_empty() {
                println!(
                    "No flags in {} yet; set one with `pipeline flags set NAME on`.",
                    st.addr
                );
            } else {
                let w = flags.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
                for (n, v) in &flags {
                    println!("{n:<w$} = {}", v.describe());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        FlagsCmd::Get {
            name,
            json,
            store: arg,
        } => {
            check_name(&name)?;
            let st = pick(ws, &arg)?;
            let (mut c, source) = read_conn(&st)?;
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
            if json {
                let mut o = v.to_json();
                o["name"] = name.clone().into();
                o["store"] = st.addr.clone().into();
                o["source"] = source.into();
                println!("{o}");
            } else {
                println!("{name} = {}", v.describe());
            }
            Ok(ExitCode::SUCCESS)
        }
        FlagsCmd::Set {
            name,
            value,
            percent,
            store: arg,
        } => {
            check_name(&name)?;
            let v = match (value, percent) {
                (OnOff::On, p) => FlagValue {
                    enabled: true,
                    percent: p.unwrap_or(100),
                },
                (OnOff::Off, None) => FlagValue::OFF,
                (OnOff::Off, Some(_)) => bail!(
                    "--percent goes with `on`\n  = help: `pipeline flags set {name} on --percent 25` turns it on for a quarter of requests; `off` turns it off for all"
                ),
            };
            let st = pick(ws, &arg)?;
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
            if behind.is_empty() {
                println!(
                    "{name} = {} (all {} mirrors in {ms:.1} ms)",
                    v.describe(),
                    mirrors.len()
                );
                Ok(ExitCode::SUCCESS)
            } else {
                println!("{name} = {} (on the primary)", v.describe());
                bail!(
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
            }
        }
    }
}
