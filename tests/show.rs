//! `pipeline show`: a saved plan shown exactly as `plan` showed it when it saved it (text and
//! -json), the recorded state in human form and as JSON with secrets masked, and a missing or
//! damaged plan file refused by name.

mod common;
use common::*;

const SECRET: &str = "hunter2-show-secret";

fn stack(src: &std::path::Path) -> String {
    format!(
        r#"variable "password" {{
  type      = string
  sensitive = true
}}
variable "greeting" {{ default = "hello" }}
file "config" {{
  path    = "out/app.env"
  content = "DSN=postgres://app:${{var.password}}@db/app\n"
  mode    = "0600"
}}
file "plain" {{
  path    = "out/plain.txt"
  content = "${{var.greeting}}\nsecond line\n"
}}
service "web" {{
  source = "{}"
  run    = "./preview --port {{{{port}}}}"
  health = {{ path = "/health", interval = "100ms" }}
}}
output "greeting" {{ value = var.greeting }}
output "dsn" {{
  value     = "postgres://app:${{var.password}}@db/app"
  sensitive = true
}}
"#,
        src.display()
    )
}

/// Applies the two files of the stack only (with `-var pw`).
fn apply_files_only(t: &Scratch, pw: &str) {
    t.ok(&[
        "apply",
        "-auto-approve",
        "s.hcl",
        "-var",
        pw,
        "-target",
        "file.config",
        "-target",
        "file.plain",
    ]);
}

#[test]
fn show_of_a_saved_plan_is_what_plan_printed_text_and_json() {
    let t = Scratch::new();
    let src = prebuilt_source(&t);
    t.write("s.hcl", &stack(&src));
    let pw = format!("password={SECRET}");
    // A first apply of the files only, so the saved plan below has updates and a multi-line diff.
    apply_files_only(&t, &pw);
    // A new password: the config's update and the output's change are shown masked.
    let pw2 = format!("password={SECRET}-new");
    let plan = t.ok(&[
        "plan",
        "s.hcl",
        "-var",
        &pw2,
        "-var",
        "greeting=bye",
        "-out",
        "p.plan",
    ]);
    let (shown_by_plan, saved_note) = plan
        .rsplit_once("\nSaved the plan to p.plan.")
        .expect("plan -out says where it saved the plan");
    assert!(saved_note.contains("pipeline apply p.plan"), "{plan}");
    assert!(
        shown_by_plan.contains("# service.web will be created"),
        "{plan}"
    );
    assert!(
        shown_by_plan.contains("# file.plain will be updated in place"),
        "{plan}"
    );
    let show = t.ok(&["show", "p.plan"]);
    assert_eq!(
        show, shown_by_plan,
        "show p.plan differs from what plan printed"
    );
    assert!(!show.contains(SECRET), "{show}");
    assert!(show.contains("(sensitive value)"), "{show}");

    let json = t.ok(&[
        "plan",
        "s.hcl",
        "-json",
        "-var",
        &pw2,
        "-var",
        "greeting=bye",
        "-out",
        "j.plan",
    ]);
    let show_json = t.ok(&["show", "-json", "j.plan"]);
    assert_eq!(show_json, json, "show -json j.plan differs from plan -json");
    assert!(!show_json.contains(SECRET), "{show_json}");
    for l in show_json.lines() {
        serde_json::from_str::<serde_json::Value>(l).expect("one JSON object a line");
    }
    assert!(
        show_json.contains(r#""type":"change_summary""#),
        "{show_json}"
    );
    // Showing changes nothing: the plan still applies.
    t.ok(&["apply", "p.plan"]);
    t.ok(&["destroy", "-auto-approve", "s.hcl", "-var", &pw2]);
}

#[test]
fn show_without_a_plan_is_the_recorded_state_with_secrets_masked() {
    let t = Scratch::new();
    let empty = t.ok(&["show"]);
    assert!(empty.contains("The state is empty"), "{empty}");
    let src = prebuilt_source(&t);
    t.write("s.hcl", &stack(&src));
    let pw = format!("password={SECRET}");
    apply_files_only(&t, &pw);
    let st = state(&t);
    let text = t.ok(&["show"]);
    assert!(!text.contains(SECRET), "show prints the secret:\n{text}");
    for addr in st.resources.keys() {
        assert!(
            text.contains(&format!("# {addr} (")),
            "{addr} missing:\n{text}"
        );
    }
    // Every attribute of the file is there; the secret-bearing content is masked.
    let plain = &st.resources["file.plain"];
    for k in plain.attrs.keys() {
        assert!(text.contains(&format!("    {k} ")), "{k} missing:\n{text}");
    }
    assert!(text.contains("out/plain.txt"), "{text}");
    assert!(text.contains("(sensitive value)"), "{text}");
    assert!(text.contains("Outputs:"), "{text}");
    assert!(text.contains("greeting = \"hello\""), "{text}");

    let json = t.ok(&["show", "-json"]);
    assert!(
        !json.contains(SECRET),
        "show -json prints the secret:\n{json}"
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rs = v["resources"].as_array().unwrap();
    assert_eq!(rs.len(), st.resources.len(), "{json}");
    let config = rs
        .iter()
        .find(|r| r["address"] == "file.config")
        .expect("file.config is shown");
    assert_eq!(
        config["attributes"]["content"], "(sensitive value)",
        "{json}"
    );
    assert_eq!(v["outputs"]["dsn"]["value"], "(sensitive value)", "{json}");
    assert_eq!(v["outputs"]["greeting"]["value"], "hello", "{json}");
    t.ok(&["destroy", "-auto-approve", "s.hcl", "-var", &pw]);
}

#[test]
fn show_of_a_missing_or_damaged_plan_file_fails_naming_it() {
    let t = Scratch::new();
    t.write(
        "s.hcl",
        "file \"f\" {\n  path    = \"out/f.txt\"\n  content = \"x\"\n}\n",
    );
    t.ok(&["plan", "s.hcl", "-out", "good.plan"]);
    let good = std::fs::read(t.path().join("good.plan")).unwrap();
    std::fs::write(t.path().join("cut.plan"), &good[..good.len() / 2]).unwrap();
    std::fs::write(t.path().join("junk.plan"), b"not a plan at all\n").unwrap();
    for (file, what) in [
        ("missing.plan", "No such file"),
        ("cut.plan", "truncated"),
        ("junk.plan", "not a saved plan"),
    ] {
        for json in [false, true] {
            let args: Vec<&str> = if json {
                vec!["show", "-json", file]
            } else {
                vec!["show", file]
            };
            let out = t.run(&args);
            let err = s(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(s(&out.stdout).is_empty(), "{args:?}: {}", s(&out.stdout));
            assert!(err.contains(file), "{args:?} names the file: {err}");
            assert!(err.contains(what), "{args:?} says {what:?}: {err}");
            assert!(err.contains("= help: "), "{args:?} says what to do: {err}");
        }
    }
}
