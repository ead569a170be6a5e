//! `pipeline completions bash|zsh|fish` and `pipeline man`, generated from the one definition
//! of the commands and flags: bash loads the script and completes subcommands and flags with
//! it; the man pages render with `man -l`, one for pipeline and one per command.

mod common;
use common::*;
use std::process::{Command, Stdio};

/// Runs `script` in a non-interactive bash (`-c`); its stdout.
fn bash(script: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .env("PATH", path_with_pipeline())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "bash: {}", s(&out.stderr));
    s(&out.stdout)
}

/// PATH with the directory of the binary under test first.
fn path_with_pipeline() -> String {
    let dir = std::path::Path::new(BIN)
        .parent()
        .unwrap()
        .display()
        .to_string();
    format!("{dir}:{}", std::env::var("PATH").unwrap_or_default())
}

/// What bash's completion offers for the command line `words` (the last one being completed).
fn complete(words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let script = format!(
        "source <(pipeline completions bash)\n\
         COMP_WORDS=({words})\n\
         COMP_CWORD={cword}\n\
         COMP_LINE=\"${{COMP_WORDS[*]}}\"\n\
         COMP_POINT=${{#COMP_LINE}}\n\
         _pipeline pipeline '{cur}' '{prev}'\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        words = quoted.join(" "),
        cword = words.len() - 1,
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    bash(&script).lines().map(str::to_string).collect()
}

#[test]
fn bash_loads_the_completions_and_completes_commands_and_flags() {
    let spec = bash("source <(pipeline completions bash)\ncomplete -p pipeline\n");
    assert!(
        spec.contains("_pipeline") && spec.trim_end().ends_with(" pipeline"),
        "complete -p pipeline: {spec}"
    );
    let subs = complete(&["pipeline", "pl"]);
    assert_eq!(subs, ["plan"], "subcommands starting with pl");
    let all = complete(&["pipeline", ""]);
    for c in [
        "plan",
        "apply",
        "deploy",
        "canary",
        "flags",
        "completions",
        "man",
    ] {
        assert!(all.iter().any(|w| w == c), "{c} among {all:?}");
    }
    assert!(
        !all.iter().any(|w| w.starts_with("__")),
        "hidden commands offered: {all:?}"
    );
    let flags = complete(&["pipeline", "apply", "--auto"]);
    assert_eq!(flags, ["--auto-approve"], "apply's flags");
    let flags = complete(&["pipeline", "deploy", "-"]);
    assert!(
        flags.iter().any(|f| f == "--inventory") && flags.iter().any(|f| f == "--version"),
        "deploy's flags: {flags:?}"
    );
}

#[test]
fn zsh_and_fish_scripts_name_every_command() {
    for shell in ["zsh", "fish"] {
        let t = Scratch::new();
        let out = t.ok(&["completions", shell]);
        for c in ["plan", "apply", "deploy", "canary", "flags"] {
            assert!(out.contains(c), "{shell}: {c}");
        }
        // The shell's own parser accepts the script (.ci/run installs zsh and fish).
        let check: &[&str] = if shell == "zsh" {
            &["-n"]
        } else {
            &["--no-execute"]
        };
        let path = t.path().join(format!("completion.{shell}"));
        std::fs::write(&path, &out).unwrap();
        let st = Command::new(shell)
            .args(check)
            .arg(&path)
            .status()
            .unwrap_or_else(|e| panic!("{shell} (installed by .ci/run): {e}"));
        assert!(st.success(), "{shell} rejects its completion script");
    }
    let t = Scratch::new();
    let out = t.run(&["completions", "tcsh"]);
    assert!(!out.status.success());
    assert!(
        s(&out.stderr).contains("bash"),
        "the shells it knows: {}",
        s(&out.stderr)
    );
}

/// `man -l FILE` as plain text (no pager, no terminal).
fn man(path: &std::path::Path) -> String {
    let out = Command::new("man")
        .arg("-l")
        .arg(path)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        // ASCII: in a UTF-8 locale groff prints hyphens of flags as U+2010.
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .expect("man (man-db) is installed by .ci/run");
    assert!(
        out.status.success(),
        "man -l {}: {}",
        path.display(),
        s(&out.stderr)
    );
    s(&out.stdout)
}

#[test]
fn the_man_pages_render_with_man() {
    let t = Scratch::new();
    let page = t.ok(&["man"]);
    t.write("pipeline.1", &page);
    let text = man(&t.path().join("pipeline.1"));
    assert!(
        text.contains("NAME") && text.contains("SUBCOMMANDS"),
        "{text}"
    );
    assert!(text.contains("pipeline-deploy(1)"), "{text}");

    let listed = t.ok(&["man", "--dir", "man"]);
    let pages: Vec<&str> = listed.lines().collect();
    assert!(pages.len() > 10, "{listed}");
    let apply = man(&t.path().join("man/pipeline-apply.1"));
    assert!(
        apply.contains("pipeline-apply") && apply.contains("\n       --auto-approve"),
        "{apply}"
    );
    for p in pages {
        assert!(!man(&t.path().join(p)).is_empty(), "{p}");
    }
}
