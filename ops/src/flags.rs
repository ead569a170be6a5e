//! `pipeline flags`: the flag stores the state records (any instance whose provider has the
//! `flags_list`, `flag_get` and `flag_set` actions: the redis provider's `flags`) and their
//! actions. The provider talks to the store and says where an answer came from (the primary, or
//! a mirror while the primary is down, with a warning).

use crate::workspace::{recorded_ctx, Workspace};
use anyhow::{anyhow, bail, Result};
use pipeline_engine::provider::JsonMap;

/// A flag store as recorded in the state.
pub struct Store {
    pub addr: String,
    rs: pipeline_engine::state::ResourceState,
}

/// What a flag action answered, and the provider's warnings about it (to show the user).
pub struct Answer {
    pub store: String,
    pub output: JsonMap,
    pub warnings: Vec<String>,
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

/// The store `want` names (`flags.ui` or `ui`), or the only one there is.
pub fn pick(ws: &Workspace, want: Option<&str>) -> Result<Store> {
    let mut all = stores(ws)?;
    let names = |all: &[Store]| {
        all.iter()
            .map(|s| s.addr.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match want {
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

/// Run the flag action `name` (`flags_list`, `flag_get`, `flag_set`) on the store `want`
/// names (see [`pick`]).
pub async fn action(
    ws: &Workspace,
    want: Option<&str>,
    name: &str,
    args: JsonMap,
) -> Result<Answer> {
    let st = pick(ws, want)?;
    let p = ws.registry.provider_of(&st.rs).ok_or_else(|| {
        anyhow!(
            "{}: no provider `{}` in this binary",
            st.addr,
            st.rs.provider
        )
    })?;
    let out = p
        .action(
            &recorded_ctx(ws)?,
            &st.rs.kind,
            &st.addr,
            &st.rs.attrs,
            name,
            &args,
        )
        .await
        .map_err(|e| anyhow!("{e}"))?;
    Ok(Answer {
        store: st.addr,
        output: out.output,
        warnings: out.warnings,
    })
}
