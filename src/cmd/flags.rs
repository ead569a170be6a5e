//! `pipeline flags`: read and flip feature flags in a flag store (`pipeline_ops::flags`).

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use pipeline_engine::provider::JsonMap;
use pipeline_ops::flags::{self, Answer};
use pipeline_ops::Workspace;
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

/// Run a flag action on the store `arg` names; the provider's warnings go to stderr.
async fn action(ws: &Workspace, arg: &StoreArg, name: &str, args: JsonMap) -> Result<Answer> {
    let answer = flags::action(ws, arg.store.as_deref(), name, args).await?;
    for w in &answer.warnings {
        eprintln!("warning: {w}");
    }
    Ok(answer)
}

fn str_of<'a>(m: &'a JsonMap, k: &str) -> &'a str {
    m.get(k).and_then(|v| v.as_str()).unwrap_or_default()
}

pub async fn run(ws: &Workspace, cmd: FlagsCmd) -> Result<ExitCode> {
    match cmd {
        FlagsCmd::List { json, store: arg } => {
            let Answer {
                store, output: out, ..
            } = action(ws, &arg, "flags_list", JsonMap::new()).await?;
            let flags = out.get("flags").cloned().unwrap_or_default();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"store": store, "source": str_of(&out, "source"), "flags": flags})
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
                    store
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
            let mut args = JsonMap::new();
            args.insert("name".into(), name.clone().into());
            let Answer {
                store, output: out, ..
            } = action(ws, &arg, "flag_get", args).await?;
            if json {
                let mut o = out.get("value").cloned().unwrap_or_default();
                o["name"] = name.clone().into();
                o["store"] = store.clone().into();
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
            let mut args = JsonMap::new();
            args.insert("name".into(), name.clone().into());
            args.insert("enabled".into(), enabled.into());
            if let Some(p) = percent {
                args.insert("percent".into(), p.into());
            }
            let out = action(ws, &arg, "flag_set", args).await?.output;
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
