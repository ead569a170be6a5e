//! `pipeline fmt` (issue 12): every stack, module, example and fixture of the repository comes out
//! parseable, a second run changes nothing, and every comment is still there, in the same order,
//! in the same top-level block; `-check` exit codes; unparsable files reported at file:line:col
//! and left untouched; standard input; the layout itself against a golden text.

mod common;

use common::{repo, s, Scratch};
use pipeline_engine::diag::SourceFile;
use std::path::{Path, PathBuf};

fn hcl_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if e.file_type().unwrap().is_dir() {
            if name != "target" && !name.starts_with('.') {
                hcl_files(&path, out);
            }
        } else if name.ends_with(".hcl") {
            out.push(path);
        }
    }
}

fn parses(path: &Path, text: &str) -> bool {
    pipeline_engine::lang::parse(&SourceFile::new(path, text.to_string())).is_ok()
}

/// End of a quoted string at `i` (with `${ }` holding strings of their own).
fn string_end(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return j + 1,
            b'$' | b'%' if b.get(j + 1) == Some(&b'{') => {
                let mut depth = 1;
                j += 2;
                while j < b.len() && depth > 0 {
                    match b[j] {
                        b'"' => {
                            j = string_end(b, j);
                            continue;
                        }
                        b'{' => depth += 1,
                        b'}' => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
            }
            _ => j += 1,
        }
    }
    j
}

/// Every comment of a file in order, each with the header of the top-level block it is in
/// (whitespace removed; "" outside blocks).
fn comments(text: &str) -> Vec<(String, String)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut header = String::new();
    let mut line_start = 0;
    let mut heredoc: Option<String> = None;
    let mut i = 0;
    while i < b.len() {
        if let Some(marker) = &heredoc {
            let end = text[i..].find('\n').map_or(b.len(), |e| i + e);
            if text[i..end].trim() == marker {
                heredoc = None;
            }
            i = end + 1;
            line_start = i;
            continue;
        }
        let rest = &text[i..];
        if b[i] == b'#' || rest.starts_with("//") {
            let end = rest.find('\n').map_or(b.len(), |e| i + e);
            out.push((text[i..end].trim_end().to_string(), header.clone()));
            i = end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(b.len(), |e| i + e + 2);
            out.push((text[i..end].to_string(), header.clone()));
            i = end;
        } else if b[i] == b'"' {
            i = string_end(b, i);
        } else if rest.starts_with("<<") {
            let line_end = rest.find('\n').unwrap_or(rest.len());
            let m = rest[2..line_end].trim_start_matches('-').trim();
            if !m.is_empty()
                && m.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                heredoc = Some(m.to_string());
                i += line_end + 1;
                line_start = i;
            } else {
                i += 2;
            }
        } else {
            match b[i] {
                b'{' | b'[' | b'(' => {
                    if depth == 0 {
                        header = text[line_start..i].split_whitespace().collect();
                    }
                    depth += 1;
                }
                b'}' | b']' | b')' => {
                    depth -= 1;
                    if depth == 0 {
                        header.clear();
                    }
                }
                b'\n' => line_start = i + 1,
                _ => {}
            }
            i += text[i..].chars().next().map_or(1, char::len_utf8);
        }
    }
    out
}

#[test]
fn every_hcl_file_of_the_repository_formats_idempotently_and_keeps_its_comments() {
    let root = repo();
    let mut files = Vec::new();
    hcl_files(&root, &mut files);
    let sc = Scratch::new();
    let mut copied = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // Fixtures of syntax errors are for the unparsable case below.
        if !parses(f, &text) {
            continue;
        }
        let rel = f.strip_prefix(&root).unwrap();
        let dest = sc.path().join("tree").join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(&dest, &text).unwrap();
        copied.push((dest, text));
    }
    assert!(
        copied.len() >= 40,
        "only {} .hcl files found under {}",
        copied.len(),
        root.display()
    );
    let total: usize = copied.iter().map(|(_, t)| comments(t).len()).sum();
    assert!(
        total >= 30,
        "only {total} comments in the repository's .hcl files"
    );

    let out = sc.run(&["fmt", "-recursive", "tree"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "fmt failed:\n{}{}",
        s(&out.stdout),
        s(&out.stderr)
    );
    for (path, before) in &copied {
        let after = std::fs::read_to_string(path).unwrap();
        assert!(
            parses(path, &after),
            "{} no longer parses:\n{after}",
            path.display()
        );
        assert_eq!(
            comments(before),
            comments(&after),
            "{}: comments lost, changed or moved to another block",
            path.display()
        );
        assert!(
            after.ends_with('\n') && !after.ends_with("\n\n"),
            "{}: not one final newline",
            path.display()
        );
        assert!(
            !after.contains("\n\n\n"),
            "{}: several blank lines in a row",
            path.display()
        );
    }
    let again = sc.run(&["fmt", "-recursive", "-check", "tree"]);
    assert_eq!(
        again.status.code(),
        Some(0),
        "a second run would change:\n{}{}",
        s(&again.stdout),
        s(&again.stderr)
    );
}

#[test]
fn check_lists_what_would_change_exits_3_and_changes_nothing() {
    let sc = Scratch::new();
    let messy = "file \"a\" {\n    path=\"out/a.txt\"\n  content   = \"x\" # why\n}\n";
    sc.write("stack/a.hcl", messy);
    sc.write("stack/b.hcl", "file \"b\" {\n  path = \"out/b.txt\"\n}\n");
    sc.write("stack/sub/c.hcl", messy);

    let out = sc.run(&["fmt", "-check", "stack"]);
    assert_eq!(out.status.code(), Some(3), "{}", s(&out.stderr));
    assert_eq!(s(&out.stdout), "stack/a.hcl\n");
    assert_eq!(
        std::fs::read_to_string(sc.path().join("stack/a.hcl")).unwrap(),
        messy
    );

    let out = sc.run(&["fmt", "-check", "-recursive", "-diff", "stack"]);
    assert_eq!(out.status.code(), Some(3));
    let stdout = s(&out.stdout);
    assert!(stdout.contains("stack/sub/c.hcl\n"), "{stdout}");
    assert!(stdout.contains("\n-    path=\"out/a.txt\"\n"), "{stdout}");
    assert!(
        stdout.contains("\n+  path    = \"out/a.txt\"\n"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(sc.path().join("stack/sub/c.hcl")).unwrap(),
        messy
    );

    // Rewritten in place, mode kept, then -check is clean.
    use std::os::unix::fs::PermissionsExt;
    let a = sc.path().join("stack/a.hcl");
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = sc.run(&["fmt", "-recursive", "stack"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(s(&out.stdout), "stack/a.hcl\nstack/sub/c.hcl\n");
    assert_eq!(
        std::fs::read_to_string(&a).unwrap(),
        "file \"a\" {\n  path    = \"out/a.txt\"\n  content = \"x\" # why\n}\n"
    );
    assert_eq!(
        std::fs::metadata(&a).unwrap().permissions().mode() & 0o777,
        0o640
    );
    let out = sc.run(&["fmt", "-check", "-recursive", "stack"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(s(&out.stdout), "");
}

#[test]
fn an_unparsable_file_is_reported_at_its_position_and_left_untouched() {
    let sc = Scratch::new();
    let bad = "file \"a\" {\n  path    = \"out/a.txt\"\n  content = \"x\" @ \"y\"\n}\n";
    sc.write("stack/bad.hcl", bad);
    sc.write("stack/good.hcl", "file \"b\" {\n  path=\"b\"\n}\n");
    let out = sc.run(&["fmt", "stack"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = s(&out.stderr);
    assert!(stderr.contains("stack/bad.hcl:3:17"), "{stderr}");
    assert!(stderr.contains("syntax error"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(sc.path().join("stack/bad.hcl")).unwrap(),
        bad
    );
    // The other file is still formatted.
    assert_eq!(
        std::fs::read_to_string(sc.path().join("stack/good.hcl")).unwrap(),
        "file \"b\" {\n  path = \"b\"\n}\n"
    );
    let out = sc.run(&["fmt", "-check", "stack/bad.hcl"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_dash_formats_standard_input_to_standard_output() {
    use std::io::Write;
    use std::process::Stdio;
    let sc = Scratch::new();
    let mut child = sc
        .cmd(&["fmt", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"locals {\nx=[1,2]\n  yy = {a=1} // c\n}\n\n\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stderr));
    assert_eq!(
        s(&out.stdout),
        "locals {\n  x  = [1, 2]\n  yy = { a = 1 } // c\n}\n"
    );
}

const GOLDEN_IN: &str = r#"

# The service.
service "web"{
      name="web"   # trailing
  replicas  =   3 // three
  ports=[ 8080,8081 ]

  env = {
  A="1"
      LONGER_NAME="2"
  }
  // between
  health   = {path="/health"}
  /* a block
       comment */
  run = <<-EOT
      exec  thing   
    EOT
  nested {
  x=1
  }
  empty = {   }
}



variable "a" {}
variable "b" {
  default=1
}
output o {
  value=var.a==1?"x":"y"
}
"#;

const GOLDEN_OUT: &str = r#"# The service.
service "web" {
  name     = "web" # trailing
  replicas = 3     // three
  ports    = [8080, 8081]

  env = {
    A           = "1"
    LONGER_NAME = "2"
  }
  // between
  health = { path = "/health" }
  /* a block
       comment */
  run = <<-EOT
      exec  thing   
    EOT
  nested {
    x = 1
  }
  empty = {}
}

variable "a" {}
variable "b" {
  default = 1
}

output "o" {
  value = var.a == 1 ? "x" : "y"
}
"#;

#[test]
fn the_layout_matches_the_golden_text() {
    let sc = Scratch::new();
    sc.write("golden.hcl", GOLDEN_IN);
    let out = sc.run(&["fmt", "golden.hcl"]);
    assert_eq!(out.status.code(), Some(0), "{}", s(&out.stderr));
    let got = std::fs::read_to_string(sc.path().join("golden.hcl")).unwrap();
    assert_eq!(got, GOLDEN_OUT, "got:\n{got}");
    let out = sc.run(&["fmt", "-check", "golden.hcl"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn the_repositorys_stacks_modules_and_examples_are_formatted() {
    let root = repo();
    let out = std::process::Command::new(common::BIN)
        .args([
            "fmt",
            "-check",
            "-recursive",
            "stacks",
            "modules",
            "examples",
        ])
        .current_dir(&root)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "run `pipeline fmt -recursive stacks modules examples`:\n{}{}",
        s(&out.stdout),
        s(&out.stderr)
    );
}
