//! Evaluator and function library: pure computations, no files beyond a temp dir.

use super::{Evaluator, LookupError, Resolve};
use crate::diag::SourceFile;
use crate::value::Value;
use indexmap::IndexMap;
use std::path::{Path, PathBuf};

struct Env {
    vals: IndexMap<(String, String), Value>,
    dir: PathBuf,
}

impl Resolve for Env {
    fn lookup(&self, root: &str, name: &str) -> Result<Value, LookupError> {
        self.vals
            .get(&(root.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| LookupError::new(format!("no {root}.{name}"), Some("declare it".into())))
    }
    fn base_dir(&self) -> &Path {
        &self.dir
    }
}

fn env() -> Env {
    let mut vals = IndexMap::new();
    let mut put = |r: &str, n: &str, v: Value| {
        vals.insert((r.to_string(), n.to_string()), v);
    };
    put("var", "n", Value::Number(3.0));
    put("var", "name", Value::str("web"));
    put("var", "secret", Value::str("hunter2").mark(true));
    put("var", "later", Value::Unknown);
    put(
        "var",
        "list",
        Value::List(vec![Value::str("a"), Value::str("b"), Value::str("c")]),
    );
    put(
        "var",
        "obj",
        Value::Map(IndexMap::from([
            ("x".to_string(), Value::Number(1.0)),
            ("y".to_string(), Value::str("two")),
        ])),
    );
    let replica = |port: f64| {
        Value::Map(IndexMap::from([
            ("port".to_string(), Value::Number(port)),
            (
                "url".to_string(),
                Value::str(format!("http://127.0.0.1:{port}")),
            ),
        ]))
    };
    put(
        "service",
        "web",
        Value::List(vec![replica(8001.0), replica(8002.0)]),
    );
    put(
        "service",
        "new",
        Value::List(vec![Value::Unknown, Value::Unknown]),
    );
    Env {
        vals,
        dir: std::env::temp_dir(),
    }
}

fn eval_in(env: &Env, src: &str) -> Result<Value, crate::diag::Diagnostic> {
    let file = SourceFile::new(Path::new("t.hcl"), src.to_string());
    let e = hcl_edit::parser::parse_expr(src).expect("parses");
    Evaluator::new(&file, env).eval(&e)
}

fn ev(src: &str) -> Value {
    eval_in(&env(), src).unwrap_or_else(|d| panic!("{src}: {d}"))
}

fn err(src: &str) -> crate::diag::Diagnostic {
    match eval_in(&env(), src) {
        Ok(v) => panic!("{src}: expected an error, got {v:?}"),
        Err(d) => d,
    }
}

fn s(x: &str) -> Value {
    Value::str(x)
}
fn n(x: f64) -> Value {
    Value::Number(x)
}
fn l(v: Vec<Value>) -> Value {
    Value::List(v)
}

#[test]
fn literals_and_operators() {
    assert_eq!(ev("1 + 2 * 3"), n(7.0));
    assert_eq!(ev("(1 + 2) * 3"), n(9.0));
    assert_eq!(ev("7 % 4"), n(3.0));
    assert_eq!(ev("-var.n"), n(-3.0));
    assert_eq!(ev("!true"), Value::Bool(false));
    assert_eq!(ev("var.n >= 3 && var.n < 4"), Value::Bool(true));
    assert_eq!(ev("\"2\" + 1"), n(3.0));
    assert_eq!(ev("var.name == \"web\""), Value::Bool(true));
    assert_eq!(ev("null"), Value::Null);
    assert_eq!(ev("[1, \"a\"]"), l(vec![n(1.0), s("a")]));
    assert_eq!(ev("{ a = 1 }.a"), n(1.0));
}

#[test]
fn templates() {
    assert_eq!(ev("\"${var.name}-${var.n}\""), s("web-3"));
    assert_eq!(
        ev("\"%{ if var.n > 2 }big%{ else }small%{ endif }\""),
        s("big")
    );
    assert_eq!(
        ev("\"%{ for x in var.list }${x},%{ endfor }\""),
        s("a,b,c,")
    );
    assert_eq!(
        ev("\"%{ for i, x in var.list }${i}${x} %{ endfor }\""),
        s("0a 1b 2c ")
    );
    assert_eq!(ev("\"a ${~ \"b\" ~} c\""), s("abc"));
    let d = err("\"${var.list}\"");
    assert_eq!(d.summary, "cannot insert a list into a string");
    assert!(d.help.is_some());
}

#[test]
fn for_expressions() {
    assert_eq!(
        ev("[for x in var.list : upper(x)]"),
        l(vec![s("A"), s("B"), s("C")])
    );
    assert_eq!(
        ev("[for i, x in var.list : i if x != \"b\"]"),
        l(vec![n(0.0), n(2.0)])
    );
    assert_eq!(
        ev("{for x in var.list : x => length(x)}"),
        Value::Map(IndexMap::from([
            ("a".to_string(), n(1.0)),
            ("b".to_string(), n(1.0)),
            ("c".to_string(), n(1.0)),
        ]))
    );
    assert_eq!(ev("{for k, v in var.obj : k => v}"), ev("var.obj"));
    assert_eq!(
        ev("{for x in [\"a\", \"b\", \"a\"] : x => 1...}"),
        Value::Map(IndexMap::from([
            ("a".to_string(), l(vec![n(1.0), n(1.0)])),
            ("b".to_string(), l(vec![n(1.0)])),
        ]))
    );
    let d = err("{for x in [\"a\", \"a\"] : x => 1}");
    assert!(d.summary.contains("duplicate key \"a\""), "{}", d.summary);
    assert!(err("[for x in 3 : x]").help.is_some());
}

#[test]
fn splats_and_indexes() {
    assert_eq!(ev("service.web[*].port"), l(vec![n(8001.0), n(8002.0)]));
    assert_eq!(ev("service.web.*.port"), l(vec![n(8001.0), n(8002.0)]));
    assert_eq!(ev("service.web[1].url"), s("http://127.0.0.1:8002"));
    assert_eq!(ev("var.obj[\"y\"]"), s("two"));
    let d = err("service.web[2].url");
    assert_eq!(
        d.summary,
        "index 2 is out of range for a list of 2 elements"
    );
    let d = err("service.web[0].nope");
    assert_eq!(d.summary, "`service.web[0]` has no attribute `nope`");
    assert!(d.help.unwrap().contains("port, url"));
    let d = err("service.web.port");
    assert!(d.summary.contains("list of 2 elements"), "{}", d.summary);
    let d = err("var.obj.z");
    assert_eq!(d.summary, "`var.obj` has no attribute `z`");
}

#[test]
fn conditionals() {
    assert_eq!(ev("var.n > 1 ? \"many\" : \"one\""), s("many"));
    assert_eq!(ev("false ? 1 : 2"), n(2.0));
    assert_eq!(ev("var.later ? 1 : 2"), Value::Unknown);
    let d = err("var.n ? 1 : 2");
    assert!(d.summary.contains("must be a bool"));
    assert!(d.help.is_some());
}

#[test]
fn unknown_propagation() {
    assert_eq!(ev("var.later + 1"), Value::Unknown);
    assert_eq!(ev("\"x${var.later}\""), Value::Unknown);
    assert_eq!(ev("upper(var.later)"), Value::Unknown);
    assert_eq!(
        ev("service.new[*].url"),
        l(vec![Value::Unknown, Value::Unknown])
    );
    assert_eq!(ev("length(service.new)"), n(2.0));
    assert_eq!(ev("[for x in var.later : x]"), Value::Unknown);
    assert_eq!(ev("var.later.attr"), Value::Unknown);
    assert!(!ev("[1, var.later]").is_known());
    assert_eq!(ev("join(\",\", service.new[*].url)"), Value::Unknown);
}

#[test]
fn sensitive_propagation() {
    assert!(ev("var.secret").is_sensitive());
    assert!(ev("\"pw=${var.secret}\"").is_sensitive());
    assert!(ev("upper(var.secret)").is_sensitive());
    assert!(ev("var.secret == \"x\"").is_sensitive());
    assert!(ev("var.secret != \"\" ? \"a\" : \"b\"").is_sensitive());
    assert!(ev("[for c in [var.secret] : c]").is_sensitive());
    assert!(ev("sensitive(\"x\")").is_sensitive());
    assert!(!ev("nonsensitive(var.secret)").is_sensitive());
    assert!(!ev("var.name").is_sensitive());
    assert_eq!(ev("upper(var.secret)").unmarked().0, s("HUNTER2"));
}

/// Issue 8, item 3: keys carry no mark, so a secret key (a route path) marks its object, and a
/// secret next to something unknown keeps its mark (plan JSON's `after_unknown` paths and
/// object keys would show it otherwise).
#[test]
fn a_secret_in_an_object_key_or_beside_an_unknown_stays_marked() {
    assert!(ev("{ (var.secret) = 1 }").is_sensitive());
    assert!(ev("{ (var.secret) = var.later }").is_sensitive());
    assert!(ev("{ for k in [\"a\"] : \"${k}${var.secret}\" => 1 }").is_sensitive());
    assert!(ev("\"${var.secret}${var.later}\"").is_sensitive());
    assert!(ev("var.secret == \"x\" ? var.later : 1").is_sensitive());
    assert!(ev("{ (var.name) = var.secret }")
        .get("web")
        .is_some_and(Value::is_sensitive));
    assert!(!ev("{ a = 1, (var.name) = 2 }").is_sensitive());
}

#[test]
fn errors_name_their_place() {
    let d = err("10 / (var.n - 3)");
    assert_eq!(d.summary, "division by zero");
    assert_eq!(d.at.as_ref().unwrap().col, 6);
    assert!(d.help.is_some());
    let d = err("var.nope");
    assert_eq!(d.summary, "no var.nope");
    assert_eq!(d.help.as_deref(), Some("declare it"));
    let d = err("nope");
    assert_eq!(d.summary, "unknown name `nope`");
    let d = err("uppercase(\"a\")");
    assert!(d.help.unwrap().contains("did you mean upper(STRING)?"));
    let d = err("join(\",\")");
    assert_eq!(d.summary, "join(): takes 2 arguments, got 1");
    assert_eq!(d.help.as_deref(), Some("usage: join(SEPARATOR, LIST)"));
    let d = err("\"a\" + 1");
    assert!(d.summary.contains("needs numbers"));
    assert!(d.help.is_some());
}

#[test]
fn try_and_can() {
    assert_eq!(ev("try(var.obj.z, \"fallback\")"), s("fallback"));
    assert_eq!(ev("can(var.obj.z)"), Value::Bool(false));
    assert_eq!(ev("can(var.obj.x)"), Value::Bool(true));
    assert!(err("try(var.obj.z)").help.is_some());
}

#[test]
fn functions() {
    let cases: &[(&str, Value)] = &[
        ("abs(-2)", n(2.0)),
        ("ceil(1.2)", n(2.0)),
        ("floor(1.8)", n(1.0)),
        ("min(3, 1, 2)", n(1.0)),
        ("max(3, 1, 2)", n(3.0)),
        ("max([4, 9]...)", n(9.0)),
        ("length(\"héllo\")", n(5.0)),
        ("length({ a = 1 })", n(1.0)),
        ("upper(\"a\")", s("A")),
        ("lower(\"A\")", s("a")),
        ("trimspace(\"  x \\n\")", s("x")),
        ("replace(\"a-b-c\", \"-\", \"+\")", s("a+b+c")),
        ("startswith(\"web-1\", \"web\")", Value::Bool(true)),
        ("endswith(\"web-1\", \"web\")", Value::Bool(false)),
        ("substr(\"hello\", 1, 3)", s("ell")),
        ("substr(\"hello\", 2, -1)", s("llo")),
        ("join(\"-\", [\"a\", \"b\"])", s("a-b")),
        ("split(\",\", \"a,b\")", l(vec![s("a"), s("b")])),
        ("split(\",\", \"\")", l(vec![])),
        ("format(\"%s:%d\", \"h\", 80)", s("h:80")),
        ("format(\"%5s|%-3s|\", \"a\", \"b\")", s("    a|b  |")),
        (
            "format(\"%.2f %v %q %%\", 1.5, 2, \"x\")",
            s("1.50 2 \"x\" %"),
        ),
        ("concat([1], [2, 3])", l(vec![n(1.0), n(2.0), n(3.0)])),
        ("contains([\"a\"], \"a\")", Value::Bool(true)),
        ("distinct([1, 1, 2])", l(vec![n(1.0), n(2.0)])),
        ("reverse([1, 2])", l(vec![n(2.0), n(1.0)])),
        ("flatten([[1], [2, [3]]])", l(vec![n(1.0), n(2.0), n(3.0)])),
        ("element([\"a\", \"b\"], 3)", s("b")),
        ("range(3)", l(vec![n(0.0), n(1.0), n(2.0)])),
        ("range(1, 3)", l(vec![n(1.0), n(2.0)])),
        ("range(0, 6, 3)", l(vec![n(0.0), n(3.0)])),
        ("range(3, 1)", l(vec![n(3.0), n(2.0)])),
        ("keys({ b = 1, a = 2 })", l(vec![s("b"), s("a")])),
        ("values({ b = 1, a = 2 })", l(vec![n(1.0), n(2.0)])),
        ("lookup({ a = 1 }, \"a\")", n(1.0)),
        ("lookup({ a = 1 }, \"b\", 0)", n(0.0)),
        ("merge({ a = 1 }, { a = 2, b = 3 })", ev("{ a = 2, b = 3 }")),
        ("merge({ a = 1 }, null)", ev("{ a = 1 }")),
        ("zipmap([\"a\", \"b\"], [1, 2])", ev("{ a = 1, b = 2 }")),
        ("coalesce(null, \"\", \"x\")", s("x")),
        ("tostring(1)", s("1")),
        ("tostring(true)", s("true")),
        ("tonumber(\"2.5\")", n(2.5)),
        ("tobool(\"true\")", Value::Bool(true)),
        ("tolist({ a = 1 })", l(vec![n(1.0)])),
        ("tomap({ a = 1 })", ev("{ a = 1 }")),
        ("jsonencode({ a = [1, \"x\"] })", s("{\"a\":[1,\"x\"]}")),
        (
            "jsondecode(\"{\\\"a\\\": [1, true]}\")",
            ev("{ a = [1, true] }"),
        ),
        (
            "sha256(\"abc\")",
            s("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        ),
        ("base64encode(\"hello!?\")", s("aGVsbG8hPw==")),
        ("base64decode(\"aGVsbG8hPw==\")", s("hello!?")),
        (
            "fileexists(\"surely-not-here-7f3a.txt\")",
            Value::Bool(false),
        ),
    ];
    for (src, want) in cases {
        assert_eq!(&ev(src), want, "{src}");
    }
}

#[test]
fn function_errors() {
    for src in [
        "upper(\"a\", \"b\")",
        "join(\",\", \"x\")",
        "lookup({ a = 1 }, \"b\")",
        "zipmap([\"a\"], [])",
        "range(0, 1, 0)",
        "tobool(\"yes\")",
        "tonumber(\"x\")",
        "jsondecode(\"{\")",
        "base64decode(\"!!\")",
        "element([], 0)",
        "format(\"%s %s\", \"a\")",
        "format(\"%z\", 1)",
        "min()",
        "file(\"surely-not-here-7f3a.txt\")",
        "templatefile(\"surely-not-here-7f3a.tpl\", {})",
        "templatefile(\"x\")",
    ] {
        let d = err(src);
        assert!(d.at.is_some(), "{src}: no location");
        assert!(d.help.is_some(), "{src}: no help: {}", d.summary);
    }
}

#[test]
fn file_and_templatefile_read_relative_to_the_base_dir() {
    let dir = std::env::temp_dir().join(format!("pipeline-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.txt"), "content").unwrap();
    std::fs::write(
        dir.join("t.tpl"),
        "%{ for u in urls }${u}\n%{ endfor }name=${name}",
    )
    .unwrap();
    std::fs::write(dir.join("bad.tpl"), "${nope}").unwrap();
    let mut e = env();
    e.dir = dir.clone();
    let get = |src: &str| eval_in(&e, src);
    assert_eq!(get("file(\"a.txt\")").unwrap(), s("content"));
    assert_eq!(
        get("templatefile(\"t.tpl\", { urls = [\"u1\", \"u2\"], name = var.name })").unwrap(),
        s("u1\nu2\nname=web")
    );
    assert!(
        get("templatefile(\"t.tpl\", { urls = [], name = var.secret })")
            .unwrap()
            .is_sensitive()
    );
    assert_eq!(
        get("templatefile(\"t.tpl\", { urls = [], name = var.later })").unwrap(),
        Value::Unknown
    );
    let d = get("templatefile(\"bad.tpl\", {})").unwrap_err();
    assert!(
        d.summary.starts_with("templatefile(): unknown name `nope`"),
        "{}",
        d.summary
    );
    assert!(d.detail.unwrap().contains("bad.tpl:1:3"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn templates_including_each_other_stop_with_an_error_even_on_a_worker_thread_stack() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.tpl"), "a ${templatefile(\"b.tpl\", {})}").unwrap();
    std::fs::write(dir.path().join("b.tpl"), "b ${templatefile(\"a.tpl\", {})}").unwrap();
    // A legitimate chain: each level includes the next one, 10 deep.
    for i in 0..10 {
        std::fs::write(
            dir.path().join(format!("n{i}.tpl")),
            format!("{i} ${{templatefile(\"n{}.tpl\", {{}})}}", i + 1),
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("n10.tpl"), "end").unwrap();
    let mut e = env();
    e.dir = dir.path().to_path_buf();
    // tokio's worker threads get 2 MiB: evaluation must stay bounded within that too.
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let d = eval_in(&e, "templatefile(\"a.tpl\", {})").unwrap_err();
            assert_eq!(d.summary, "templatefile(): templates nested too deeply");
            assert_eq!(d.at.as_ref().map(|a| (a.line, a.col)), Some((1, 1)));
            let detail = d.detail.unwrap();
            assert!(
                detail.contains("a.tpl (") && detail.contains("b.tpl ("),
                "{detail}"
            );
            // try() and can() do not retry each level of a recursion (exponential time).
            let d = eval_in(&e, "try(templatefile(\"a.tpl\", {}), \"fallback\")").unwrap_err();
            assert_eq!(d.summary, "templatefile(): templates nested too deeply");
            // The depth is given back on the way out: a legitimate chain works afterwards.
            assert_eq!(
                eval_in(&e, "templatefile(\"n0.tpl\", {})").unwrap(),
                s("0 1 2 3 4 5 6 7 8 9 end")
            );
        })
        .unwrap()
        .join()
        .expect("no stack overflow, no panic");
}
