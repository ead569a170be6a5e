//! `pipeline flags`: read and flip feature flags in a flag store. The store is any recorded
//! instance whose provider has the `flags_list`, `flag_get` and `flag_set` actions (the redis
//! provider's `flags`); the provider talks to it and says where an answer came from (the
//! primary, or a mirror while the primary is down, with a warning on stderr).

use crate::ops::Workspace;
use crate::render::Style;
use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use pipeline_engine::provider::JsonMap;
use std::process::ExitCode;

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

/// A flag store as recorded in the state.
struct Store {
    addr: String,
    rs: pipeline_engine::state::ResourceState,
}

fn stores(ws: &Workspace) -> Result<Vec<Store>> {
    let state = ws.state()?;
    Ok(state
        .resources
        .into_iter()
        .filter(|(_, rs)| {
            ws.registry
                .provider_of(rs)
                .is_some_and(|p| p.actions(&rs.kind).iter().any(|a| a.name == "flag_set"))
        })
        .map(|(addr, rs)| Store { addr, rs })
        .collect())
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
            let suffix = format!(".{want}");
            match all
                .iter()
                .position(|s| s.addr == *want || s.addr.ends_with(&suffix))
            {
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

/// Run a flag action of the store's provider; its warnings go to stderr.
async fn action(ws: &Workspace, st: &Store, name: &str, args: JsonMap) -> Result<JsonMap> {
    let p = ws.registry.provider_of(&st.rs).ok_or_else(|| {
        anyhow!(
            "{}: no provider `{}` in this binary",
            st.addr,
            st.rs.provider
        )
    })?;
    let out = p
        .action(
            &crate::ops::recorded_ctx(ws)?,
            &st.rs.kind,
            &st.addr,
            &st.rs.attrs,
            name,
            &args,
        )
        .await
        .map_err(|e| anyhow!("{e}"))?;
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    Ok(out.output)
}

fn str_of<'a>(m: &'a JsonMap, k: &str) -> &'a str {
    m.get(k).and_then(|v| v.as_str()).unwrap_or_default()
}

pub async fn run(ws: &Workspace, cmd: FlagsCmd, _style: Style) -> Result<ExitCode> {
    match cmd {
        FlagsCmd::List { json, store: arg } => {
            let st = pick(ws, &arg)?;
            let out = action(ws, &st, "flags_list", JsonMap::new()).await?;
            let flags = out.get("flags").cloned().unwrap_or_default();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"store": st.addr, "source": str_of(&out, "source"), "flags": flags})
                );
                return Ok(ExitCode::SUCCESS);
            }
            let described = out
                .get("described")
                .and_then(|d| d.as_object())
                .cloned()
                .unwrap_or_default();
            if described.is_empty() {
                println!(
                    "No flags in {} yet; set one with `pipeline flags set NAME on`.",
                    st.addr
                );
            } else {
                let w = described.keys().map(String::len).max().unwrap_or(0);
                for (n, v) in &described {
                    println!("{n:<w$} = {}", v.as_str().unwrap_or_default());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        FlagsCmd::Get {
            name,
            json,
            store: arg,
        } => {
            let st = pick(ws, &arg)?;
            let mut args = JsonMap::new();
            args.insert("name".into(), name.clone().into());
            let out = action(ws, &st, "flag_get", args).await?;
            if json {
                let mut o = out.get("value").cloned().unwrap_or_default();
                o["name"] = name.clone().into();
                o["store"] = st.addr.clone().into();
                o["source"] = str_of(&out, "source").into();
                println!("{o}");
            } else {
                println!("{name} = {}", str_of(&out, "described"));
            }
            Ok(ExitCode::SUCCESS)
        }
        FlagsCmd::Set {
            name,
            value,
            percent,
            store: arg,
        } => {
            let enabled = match (value, percent) {
                (OnOff::On, _) => true,
                (OnOff::Off, None) => false,
                (OnOff::Off, Some(_)) => bail!(
                    "--percent goes with `on`\n  = help: `pipeline flags set {name} on --percent 25` turns it on for a quarter of requests; `off` turns it off for all"
                ),
            };
            let st = pick(ws, &arg)?;
            let mut args = JsonMap::new();
            args.insert("name".into(), name.clone().into());
            args.insert("enabled".into(), enabled.into());
            if let Some(p) = percent {
                args.insert("percent".into(), p.into());
            }
            let out = action(ws, &st, "flag_set", args).await?;
            let described = str_of(&out, "described");
            match out.get("error").and_then(|e| e.as_str()) {
                None => {
                    println!(
                        "{name} = {described} (all {} mirrors in {:.1} ms)",
                        out.get("mirrors").and_then(|m| m.as_u64()).unwrap_or(0),
                        out.get("ms").and_then(|m| m.as_f64()).unwrap_or(0.0)
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Some(e) => {
                    println!("{name} = {described} (on the primary)");
                    bail!("{e}")
                }
            }
        }
    }
}
