//! Bad input: malformed or wrong stacks each give a precise diagnostic (file:line:col, the
//! source line, a caret and a help line), exit 1, and leave the state byte-for-byte untouched.
//!
//! Every case first applies a small valid stack into a fresh state directory, records every
//! byte under the temp directory (state.json, state.journal, the `stack` file and the files the
//! stack wrote), runs the failing command, snapshots its normalised stderr and checks that
//! nothing changed.

use assert_cmd::Command;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const BASE_STACK: &str = r#"file "a" {
  path    = "out/a.txt"
  content = "x"
}

file "b" {
  path    = "out/b.txt"
  content = "y"
}

output "a" {
  value = file.a.sha256
}
"#;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad")
}

/// How the state directory is named to the binary.
#[derive(Clone, Copy, PartialEq)]
enum StateDir {
    Flag,
    Env,
}

/// What the diagnostic must show.
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    /// file:line:col, the source line, a caret and a help line.
    Located,
    /// No source position exists (a missing file, a command-line value): a help line only.
    HelpOnly,
}

struct Work {
    tmp: tempfile::TempDir,
    state: PathBuf,
}

impl Work {
    /// A temp working directory whose state holds a real, applied stack.
    fn new(mode: StateDir) -> Work {
        let tmp = tempfile::tempdir().expect("temp dir");
        let state = tmp.path().join("state");
        let base = tmp.path().join("base");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("base.hcl"), BASE_STACK).unwrap();
        let w = Work { tmp, state };
        let out = w
            .cmd(mode)
            .args(["apply", "-auto-approve", "base/base.hcl"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the base stack must apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        w
    }

    fn cmd(&self, mode: StateDir) -> Command {
        let mut c = Command::cargo_bin("pipeline").expect("the pipeline binary");
        c.current_dir(self.tmp.path());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PIPELINE_") {
                c.env_remove(k);
            }
        }
        c.env_remove("NO_COLOR").env("RUST_BACKTRACE", "0");
        c.arg("--no-color");
        match mode {
            StateDir::Flag => {
                c.arg("--state-dir").arg(&self.state);
            }
            StateDir::Env => {
                c.env("PIPELINE_DIR", &self.state);
            }
        }
        c
    }

    /// Every file under the temp directory with its bytes.
    fn files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, root, out);
                } else {
                    let rel = p.strip_prefix(root).unwrap().to_path_buf();
                    out.insert(rel, std::fs::read(&p).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.tmp.path(), self.tmp.path(), &mut out);
        out
    }

    fn normalize(&self, s: &str) -> String {
        let mut s = s.replace(&fixtures().display().to_string(), "[FIXTURES]");
        let tmp = self.tmp.path();
        if let Ok(c) = tmp.canonicalize() {
            s = s.replace(&c.display().to_string(), "[TMP]");
        }
        s.replace(&tmp.display().to_string(), "[TMP]")
    }
}

/// Run `args` (with `{F}` standing for the fixtures directory and `{T}` for the temp directory)
/// and check exit code, output, snapshot and the untouched state.
fn check_with(name: &str, args: &[&str], expect: Expect, mode: StateDir, prepare: fn(&Path)) {
    let w = Work::new(mode);
    prepare(w.tmp.path());
    let before = w.files();
    for f in ["state/state.json", "state/state.journal", "state/stack"] {
        assert!(
            before.contains_key(Path::new(f)),
            "{f} exists after the base apply"
        );
    }
    assert!(!before[Path::new("state/state.json")].is_empty());

    let f = fixtures().display().to_string();
    let t = w.tmp.path().display().to_string();
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("{F}", &f).replace("{T}", &t))
        .collect();
    let out = w.cmd(mode).args(&args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);

    assert!(
        !stdout.contains("panicked") && !stderr.contains("panicked"),
        "{name}: the binary panicked:\n{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{name}: exit code\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.trim().is_empty(),
        "{name}: nothing belongs on stdout when the stack is rejected:\n{stdout}"
    );
    // Stack text and values are escaped: nothing in a diagnostic acts on the terminal.
    let acting: Vec<char> = stderr
        .chars()
        .filter(|c| {
            (c.is_control() && *c != '\n' && *c != '\t')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect();
    assert!(
        acting.is_empty(),
        "{name}: control characters {acting:?} reach the terminal:\n{stderr:?}"
    );
    let norm = w.normalize(&stderr);
    assert!(norm.starts_with("error: "), "{name}: {norm}");
    assert!(norm.contains("= help: "), "{name}: no help line:\n{norm}");
    if expect != Expect::HelpOnly {
        assert!(norm.contains(" --> "), "{name}: no file:line:col:\n{norm}");
        assert!(norm.contains('^'), "{name}: no caret:\n{norm}");
    }
    insta::assert_snapshot!(name, norm);

    let after = w.files();
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "{name}: files appeared or disappeared under the working directory"
    );
    for (p, b) in &before {
        assert!(
            after[p] == *b,
            "{name}: {} changed:\nbefore: {}\nafter: {}",
            p.display(),
            String::from_utf8_lossy(b),
            String::from_utf8_lossy(&after[p])
        );
    }
}

fn nothing(_: &Path) {}

fn check(name: &str, args: &[&str]) {
    check_with(name, args, Expect::Located, StateDir::Flag, nothing)
}

/// `plan FIXTURE` for a stack file `tests/fixtures/bad/NAME.hcl`.
macro_rules! plan_case {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let fixture = format!("{{F}}/{}.hcl", stringify!($name));
            check(stringify!($name), &["plan", &fixture]);
        }
    )*};
}

// Syntax.
plan_case!(
    syntax_unclosed_brace,
    syntax_bad_token,
    syntax_unterminated_string,
    syntax_missing_equals,
    duplicate_attribute,
);

// Structure: blocks, labels, attributes.
plan_case!(
    unknown_block_type,
    wrong_label_count,
    wrong_label_count_variable,
    unknown_attribute,
    computed_attribute_written,
    missing_required_attribute,
    top_level_attribute,
    nested_block,
    unknown_provider,
    variable_unknown_type,
);

// Types.
plan_case!(
    wrong_type_replicas,
    wrong_type_list_for_string,
    variable_type_violated,
    missing_required_variable,
);

// References and the graph.
plan_case!(
    ref_missing_variable,
    ref_missing_local,
    ref_missing_resource,
    ref_missing_attribute,
    depends_on_missing,
    index_out_of_range,
    cycle_locals,
    cycle_depends_on,
    self_reference,
    duplicate_resource,
    duplicate_variable,
    duplicate_output,
    duplicate_local,
);

// count and for_each.
plan_case!(
    count_negative,
    count_fractional,
    count_string,
    count_unknown,
    count_unknown_splat,
    count_index_without_count,
    each_key_without_for_each,
);

// Expressions and functions.
plan_case!(
    unknown_function,
    function_wrong_args,
    file_missing,
    templatefile_missing,
    division_by_zero,
    string_interpolating_list,
);

// Evaluation is bounded: exit 1 with the position, never a stack overflow (signal).
plan_case!(templatefile_includes_itself, values_nested_too_deeply);

#[test]
fn apply_templatefile_includes_itself() {
    check(
        "apply_templatefile_includes_itself",
        &[
            "apply",
            "-auto-approve",
            "{F}/templatefile_includes_itself.hcl",
        ],
    );
}

// Text that is not plain: a byte order mark counts for no column; control characters and
// bidirectional overrides in the stack are shown escaped.
plan_case!(bom_error_position, control_characters);

#[test]
fn var_flag_with_control_characters() {
    check_with(
        "var_flag_with_control_characters",
        &[
            "plan",
            "{F}/var_file_stack.hcl",
            "-var",
            "\u{1b}[2Jgreting\r=hi",
        ],
        Expect::HelpOnly,
        StateDir::Flag,
        nothing,
    );
}

#[test]
fn a_stack_file_with_a_byte_order_mark_applies() {
    let w = Work::new(StateDir::Flag);
    std::fs::write(
        w.tmp.path().join("base/bom.hcl"),
        format!("\u{feff}{BASE_STACK}"),
    )
    .unwrap();
    let out = w
        .cmd(StateDir::Flag)
        .args(["apply", "-auto-approve", "base/bom.hcl"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("No changes"),
        "the same stack with a byte order mark is the same stack: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_long_chain_of_locals_computed_during_apply_is_an_error_not_a_crash() {
    let w = Work::new(StateDir::Flag);
    let n = 2000;
    let mut text: String = (0..n)
        .map(|i| format!("locals {{ l{i} = local.l{} + 1 }}\n", i + 1))
        .collect();
    text.push_str(&format!(
        "locals {{ l{n} = 0 }}\nfile \"deep\" {{\n  path    = \"out/deep.txt\"\n  content = \"${{local.l0}}\"\n}}\n"
    ));
    std::fs::write(w.tmp.path().join("chain.hcl"), text).unwrap();
    let out = w
        .cmd(StateDir::Flag)
        .args(["apply", "-auto-approve", "chain.hcl"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit 1, not a signal: {err}");
    assert!(err.contains("chain.hcl:"), "the position is named: {err}");
    // The cause is shown, not only "local.l0 could not be evaluated".
    assert!(
        err.contains("nested too deeply"),
        "the cause is named: {err}"
    );
    assert!(!w.tmp.path().join("out/deep.txt").exists());
}

// Provider validation: values the schema cannot check (an exclusive pair, a mode, health).
macro_rules! provider_case {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let fixture = format!("{{F}}/{}.hcl", stringify!($name));
            check_with(
                stringify!($name),
                &["plan", &fixture],
                Expect::Located,
                StateDir::Flag,
                nothing,
            );
        }
    )*};
}

provider_case!(
    file_content_and_template,
    file_invalid_mode,
    service_invalid_health,
    service_unknown_health_setting,
    service_canary_steps_decreasing,
    service_canary_unknown_strategy,
    for_each_duplicate_keys,
);

// Modules (a directory per case, sharing tests/fixtures/bad/modules/).
#[test]
fn module_missing_source_dir() {
    check(
        "module_missing_source_dir",
        &["plan", "{F}/module_missing_source_dir"],
    );
}

#[test]
fn module_missing_input() {
    check(
        "module_missing_input",
        &["plan", "{F}/module_missing_input"],
    );
}

#[test]
fn module_unknown_input() {
    check(
        "module_unknown_input",
        &["plan", "{F}/module_unknown_input"],
    );
}

#[test]
fn module_output_missing() {
    check(
        "module_output_missing",
        &["plan", "{F}/module_output_missing"],
    );
}

// The same errors through apply and validate.
#[test]
fn apply_unknown_attribute() {
    check(
        "apply_unknown_attribute",
        &["apply", "-auto-approve", "{F}/unknown_attribute.hcl"],
    );
}

#[test]
fn apply_count_unknown() {
    check(
        "apply_count_unknown",
        &["apply", "-auto-approve", "{F}/count_unknown.hcl"],
    );
}

#[test]
fn apply_division_by_zero_state_dir_env() {
    check_with(
        "apply_division_by_zero_state_dir_env",
        &["apply", "-auto-approve", "{F}/division_by_zero.hcl"],
        Expect::Located,
        StateDir::Env,
        nothing,
    );
}

#[test]
fn validate_cycle_locals() {
    check(
        "validate_cycle_locals",
        &["validate", "{F}/cycle_locals.hcl"],
    );
}

#[test]
fn validate_ref_missing_attribute() {
    check(
        "validate_ref_missing_attribute",
        &["validate", "{F}/ref_missing_attribute.hcl"],
    );
}

#[test]
fn validate_syntax_unterminated_string() {
    check(
        "validate_syntax_unterminated_string",
        &["validate", "{F}/syntax_unterminated_string.hcl"],
    );
}

#[test]
fn validate_module_missing_input() {
    check(
        "validate_module_missing_input",
        &["validate", "{F}/module_missing_input"],
    );
}

// Variables from the command line and var files.
#[test]
fn var_flag_undeclared() {
    check_with(
        "var_flag_undeclared",
        &["plan", "{F}/var_file_stack.hcl", "-var", "greting=hi"],
        Expect::HelpOnly,
        StateDir::Flag,
        nothing,
    );
}

#[test]
fn var_file_syntax_error() {
    check(
        "var_file_syntax_error",
        &[
            "plan",
            "{F}/var_file_stack.hcl",
            "-var-file",
            "{F}/bad.tfvars",
        ],
    );
}

#[test]
fn var_file_reference() {
    check_with(
        "var_file_reference",
        &[
            "plan",
            "{F}/var_file_stack.hcl",
            "-var-file",
            "{F}/bad_ref.tfvars",
        ],
        Expect::Located,
        StateDir::Flag,
        nothing,
    );
}

// Files that are not there or cannot be read.
#[test]
fn stack_path_missing() {
    check_with(
        "stack_path_missing",
        &["plan", "{F}/no_such_stack.hcl"],
        Expect::HelpOnly,
        StateDir::Flag,
        nothing,
    );
}

#[test]
fn stack_dir_without_hcl() {
    check_with(
        "stack_dir_without_hcl",
        &["plan", "{F}/dir_without_hcl"],
        Expect::HelpOnly,
        StateDir::Flag,
        nothing,
    );
}

#[test]
fn unreadable_not_utf8() {
    fn prepare(tmp: &Path) {
        std::fs::write(
            tmp.join("latin1.hcl"),
            b"file \"a\" {\n  path    = \"out/a.txt\"\n  content = \"caf\xe9\"\n}\n",
        )
        .unwrap();
    }
    check_with(
        "unreadable_not_utf8",
        &["plan", "{T}/latin1.hcl"],
        Expect::Located,
        StateDir::Flag,
        prepare,
    );
}
