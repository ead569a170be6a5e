//! `file`: a file with literal content or a handlebars template rendered with values from the stack.

use super::to_json_map;
use pipeline_engine::format::Format;
use pipeline_engine::provider::{
    ApplyRequest, AttrSchema, Invalid, JsonMap, KindSchema, PlanRequest, Planned, ProviderCtx,
    ProviderError, Type,
};
use pipeline_engine::value::{Value, ValueMap};
use sha2::Digest;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

pub fn schema() -> KindSchema {
    KindSchema {
        kind: "file",
        attrs: vec![
            AttrSchema::required("path", Type::String)
                .force_new()
                .format(Format::FilePath),
            AttrSchema::optional("content", Type::String),
            AttrSchema::optional("template", Type::String),
            AttrSchema::optional("vars", Type::Any).default(Value::Map(Default::default())),
            AttrSchema::optional("mode", Type::String).default(Value::str("0644")),
            AttrSchema::computed("rendered", Type::String),
            AttrSchema::computed("sha256", Type::String),
        ],
        instances_attr: None,
    }
}

pub fn validate(c: &ValueMap) -> Vec<Invalid> {
    let mut out = vec![];
    let set = |k: &str| !matches!(c.get(k), None | Some(Value::Null));
    if set("content") == set("template") {
        out.push(Invalid::new(
            None,
            "a file needs exactly one of `content` or `template`",
            "write content = \"...\" for literal text, or template = \"...\" with vars = { ... } for a handlebars template",
        ));
    }
    if let Some(m) = c.get("mode").and_then(Value::as_str) {
        if u32::from_str_radix(m, 8).map_or(true, |m| m > 0o7777) {
            out.push(Invalid::new(
                Some("mode"),
                format!("mode {m:?} is not an octal file mode"),
                "write the mode as an octal string, e.g. mode = \"0644\" or \"0600\"",
            ));
        }
    }
    out
}

fn path_of(ctx: &ProviderCtx, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        ctx.stack_dir.join(p)
    }
}

fn render(c: &ValueMap) -> Result<Value, ProviderError> {
    if let Some(Value::String(s)) = c.get("content") {
        return Ok(Value::String(s.clone()));
    }
    if c.get("content").is_some_and(|v| !matches!(v, Value::Null)) {
        return Ok(c["content"].clone());
    }
    let tpl = c.get("template").cloned().unwrap_or(Value::Null);
    let vars = c.get("vars").cloned().unwrap_or(Value::Null);
    if !tpl.is_known() || !vars.is_known() {
        return Ok(Value::Unknown);
    }
    let sensitive = tpl.is_sensitive() || vars.is_sensitive();
    let mut hb = handlebars::Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    register_quoting(&mut hb);
    let text = tpl.as_str().unwrap_or_default().to_string();
    let out = hb
        .render_template(&text, &vars.unmarked().0.to_json())
        .map_err(|e| {
            ProviderError::new(format!("the template does not render: {e}"))
                .help("template values come from `vars`; every {{name}} must be in it")
        })?;
    Ok(Value::String(out).mark(sensitive))
}

/// `{{shell x}}`, `{{nginx x}}`, `{{redis x}}`, `{{json x}}` in templates: a value quoted for the
/// format of the file being written (providers/src/quote.rs), as the providers' own renderers do.
fn register_quoting(hb: &mut handlebars::Handlebars<'_>) {
    use handlebars::{
        Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
    };
    type Quoter = fn(&str) -> Result<String, String>;
    let quoters: [(&'static str, Quoter); 4] = [
        ("shell", |s| Ok(crate::quote::shell(s))),
        ("nginx", crate::quote::nginx),
        ("redis", |s| Ok(crate::quote::redis(s))),
        ("json", |s| {
            Ok(serde_json::Value::String(s.to_string()).to_string())
        }),
    ];
    for (name, quote) in quoters {
        hb.register_helper(
            name,
            Box::new(
                move |h: &Helper<'_>,
                      _: &Handlebars<'_>,
                      _: &Context,
                      _: &mut RenderContext<'_, '_>,
                      out: &mut dyn Output|
                      -> HelperResult {
                    let v = h
                        .param(0)
                        .ok_or(RenderErrorReason::ParamNotFoundForIndex(name, 0))?
                        .value();
                    let text = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let quoted = quote(&text).map_err(|e| {
                        RenderErrorReason::Other(format!("{{{{{name} ...}}}}: {e}"))
                    })?;
                    out.write(&quoted)?;
                    Ok(())
                },
            ),
        );
    }
}

fn sha(s: &str) -> String {
    pipeline_engine::lang::funcs::hex(&sha2::Sha256::digest(s.as_bytes()))
}

pub fn plan(ctx: &ProviderCtx, req: &PlanRequest<'_>) -> Result<Planned, ProviderError> {
    if let Some(p) = req.config.get("path").and_then(Value::as_str) {
        let path = path_of(ctx, p);
        // Caught here, not halfway through an apply that `destroy` could then not undo.
        if path.is_dir() {
            return Err(ProviderError::new(format!(
                "{} is a directory; a file cannot be written there",
                path.display()
            ))
            .help("`path` names the file itself, e.g. path = \"out/index.html\"")
            .attr("path"));
        }
    }
    let mut o = req.config.clone();
    let rendered = render(req.config)?;
    let digest = match rendered.unmarked().0 {
        Value::String(s) => Value::String(sha(&s)),
        _ => Value::Unknown,
    };
    o.insert("rendered".into(), rendered);
    o.insert("sha256".into(), digest);
    Ok(Planned {
        object: o,
        requires_replace: vec![],
    })
}

pub fn read(ctx: &ProviderCtx, prior: &JsonMap) -> Result<Option<JsonMap>, ProviderError> {
    let Some(p) = prior.get("path").and_then(|v| v.as_str()) else {
        return Ok(None);
    };
    let path = path_of(ctx, p);
    if path.is_dir() {
        // Something else stands where the file was: the file is gone.
        return Ok(None);
    }
    let text = match std::fs::read(&path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ProviderError::new(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let mut now = prior.clone();
    if prior.get("sha256").and_then(|v| v.as_str()) != Some(&sha(&text)) {
        now.insert("sha256".into(), sha(&text).into());
        now.insert("rendered".into(), text.into());
    }
    if let Ok(meta) = std::fs::metadata(&path) {
        now.insert(
            "mode".into(),
            format!("{:04o}", meta.permissions().mode() & 0o7777).into(),
        );
    }
    Ok(Some(now))
}

pub fn apply(ctx: &ProviderCtx, req: &ApplyRequest<'_>) -> Result<JsonMap, ProviderError> {
    let planned = plan(
        ctx,
        &PlanRequest {
            kind: req.kind,
            addr: req.addr,
            config: req.config,
            prior: req.prior,
        },
    )?
    .object;
    let text = planned["rendered"]
        .unmarked()
        .0
        .as_str()
        .unwrap_or_default()
        .to_string();
    let path = path_of(ctx, req.config["path"].as_str().unwrap_or_default());
    let mode =
        u32::from_str_radix(req.config["mode"].as_str().unwrap_or("0644"), 8).unwrap_or(0o644);
    let io = |e: std::io::Error, what: &str| {
        ProviderError::new(format!("cannot {what} {}: {e}", path.display()))
    };
    // Directories this file needed are recorded so that delete leaves nothing behind.
    let mut created: Vec<String> = req
        .prior
        .and_then(|p| p.get("created_dirs"))
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut cur = path.parent();
    while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        created.push(d.display().to_string());
        cur = d.parent();
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io(e, "create the directory of"))?;
    }
    // Atomic: readers see the old or the new file, never a half-written one.
    let tmp = path.with_file_name(format!(
        ".{}.pipeline-tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    std::fs::write(&tmp, text.as_bytes()).map_err(|e| io(e, "write"))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io(e, "set the mode of"))?;
    std::fs::rename(&tmp, &path).map_err(|e| io(e, "replace"))?;
    let mut out = to_json_map(&planned);
    if !created.is_empty() {
        out.insert("created_dirs".into(), created.into());
    }
    Ok(out)
}

pub fn delete(ctx: &ProviderCtx, prior: &JsonMap) -> Result<(), ProviderError> {
    let Some(p) = prior.get("path").and_then(|v| v.as_str()) else {
        return Ok(());
    };
    let path = path_of(ctx, p);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        // A directory there now is not the file this resource wrote: leave it alone.
        Err(_) if path.is_dir() => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ProviderError::new(format!(
                "cannot remove {}: {e}",
                path.display()
            )))
        }
    }
    // Deepest first; a directory that holds anything else stays.
    let mut dirs: Vec<&str> = prior
        .get("created_dirs")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_quote_values_for_the_file_they_write() {
        let mut c = ValueMap::new();
        c.insert(
            "template".into(),
            Value::str("cmd {{shell arg}}\nlocation {{nginx path}} {}\n{{json arg}}"),
        );
        let vars: ValueMap = [
            ("arg".to_string(), Value::str("it's; rm -rf /")),
            ("path".to_string(), Value::str("/a b")),
        ]
        .into_iter()
        .collect();
        c.insert("vars".into(), Value::Map(vars));
        let out = render(&c).unwrap();
        assert_eq!(
            out.as_str().unwrap(),
            "cmd 'it'\\''s; rm -rf /'\nlocation \"/a b\" {}\n\"it's; rm -rf /\""
        );
        c.insert("template".into(), Value::str("{{nginx arg}}"));
        c.insert(
            "vars".into(),
            Value::Map(
                [("arg".to_string(), Value::str("$host"))]
                    .into_iter()
                    .collect(),
            ),
        );
        assert!(render(&c).is_err(), "nginx cannot carry $");
    }
}
