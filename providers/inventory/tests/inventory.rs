//! Inventories under tests/fixtures/, each read as ansible-core reads it (the valid ones were
//! compared with `ansible-inventory -i FILE --list` by hand; these tests need no ansible), and
//! the wrong ones each refused with its `file:line:col`, the line, and what to do.

use std::collections::BTreeMap;

use pipeline_inventory::{ErrorKind, Host, Inventory, Value};
use serde_json::json;

fn path(name: &str) -> String {
    format!("tests/fixtures/{name}")
}

fn load(name: &str) -> Inventory {
    Inventory::load(path(name)).unwrap_or_else(|e| panic!("{e}"))
}

fn error(name: &str) -> (ErrorKind, String) {
    match Inventory::load(path(name)) {
        Ok(_) => panic!("{name} was read without an error"),
        Err(e) => (e.kind(), e.to_string()),
    }
}

fn names(hosts: &[Host]) -> Vec<&str> {
    hosts.iter().map(|h| h.name.as_str()).collect()
}

fn hosts_of(inv: &Inventory, group: &str) -> Vec<String> {
    inv.hosts_of(group)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|h| h.name)
        .collect()
}

fn vars(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn host<'a>(inv: &'a Inventory, name: &str) -> &'a Host {
    inv.host(name)
        .unwrap_or_else(|| panic!("no host {name} in {:?}", names(inv.hosts())))
}

// ---- what is read ----

#[test]
fn groups_ungrouped_hosts_and_comments() {
    let inv = load("groups.ini");
    assert_eq!(inv.group_names(), ["all", "ungrouped", "web", "db"]);
    assert_eq!(
        names(inv.hosts()),
        [
            "bastion.example.com",
            "web1.example.com",
            "web2.example.com",
            "db1.example.com"
        ]
    );
    assert_eq!(hosts_of(&inv, "ungrouped"), ["bastion.example.com"]);
    assert_eq!(
        hosts_of(&inv, "web"),
        ["web1.example.com", "web2.example.com"]
    );
    // A host may be in two groups; it is one host.
    assert_eq!(
        hosts_of(&inv, "db"),
        ["db1.example.com", "web1.example.com"]
    );
    assert_eq!(host(&inv, "web1.example.com").groups, ["db", "web"]);
    assert_eq!(
        hosts_of(&inv, "all"),
        [
            "bastion.example.com",
            "web1.example.com",
            "web2.example.com",
            "db1.example.com"
        ]
    );
    let web1 = host(&inv, "web1.example.com");
    assert_eq!(web1.address, "web1.example.com");
    assert_eq!(web1.port, None);
    assert!(web1.vars.is_empty());
}

#[test]
fn children_nest_and_may_be_defined_after_their_parent() {
    let inv = load("children.ini");
    assert_eq!(
        inv.children_of("production").unwrap(),
        ["frontend", "backend"]
    );
    assert_eq!(inv.children_of("frontend").unwrap(), ["web", "balancer"]);
    assert_eq!(inv.children_of("all").unwrap(), ["ungrouped", "production"]);
    // Own hosts first, then each child's, breadth first, each host once.
    assert_eq!(hosts_of(&inv, "production"), ["db1", "web1", "web2", "lb1"]);
    assert_eq!(hosts_of(&inv, "frontend"), ["web1", "web2", "lb1"]);
    assert_eq!(
        host(&inv, "web1").groups,
        ["backend", "frontend", "production", "web"]
    );
    assert!(hosts_of(&inv, "ungrouped").is_empty());
}

#[test]
fn variables_combine_host_over_child_over_parent_over_all() {
    let inv = load("group_vars.ini");
    assert_eq!(
        host(&inv, "web1").vars,
        vars(&[
            ("color", json!("host")),
            ("owner", json!("ops")),
            ("region", json!("app")),
            ("tier", json!("web")),
        ])
    );
    // web2 is in cache (depth 1: under all) and web (depth 2: under app): the deeper wins.
    assert_eq!(host(&inv, "web2").vars["tier"], json!("web"));
    assert_eq!(host(&inv, "web2").vars["color"], json!("web"));
    assert_eq!(host(&inv, "db1").vars["color"], json!("app"));
    assert_eq!(host(&inv, "db1").vars["owner"], json!("ops"));
    assert_eq!(
        inv.group_vars("all").unwrap(),
        vars(&[
            ("color", json!("all")),
            ("owner", json!("ops")),
            ("region", json!("all")),
        ])
    );
}

#[test]
fn groups_of_one_depth_are_ordered_by_priority_then_name() {
    let inv = load("priority.ini");
    // Without the priority beta (the later name) would win.
    assert_eq!(host(&inv, "shared1").vars, vars(&[("who", json!("alpha"))]));
}

#[test]
fn inline_values_are_python_literals_after_shell_quoting() {
    let inv = load("inline_vars.ini");
    assert_eq!(
        host(&inv, "web1").vars,
        vars(&[
            ("bool", json!(true)),
            ("lower", json!("true")),
            ("none", Value::Null),
            ("number", json!(42)),
            ("quoted_number", json!("42")),
            ("shell_quoted", json!(42)),
            ("single", json!("it is")),
            ("spaced", json!("hello world")),
            ("text", json!("hello")),
        ])
    );
    assert_eq!(
        host(&inv, "web2").vars,
        vars(&[
            ("dict", json!({"k": [1, 2]})),
            ("float", json!(1.5)),
            // An unquoted '#' ends the line, even inside a word.
            ("hash", json!("ab")),
            ("hex", json!(31)),
            ("list", json!([1, "two"])),
            // Python refuses leading zeros, so the text stays.
            ("padded", json!("007")),
            ("tuple", json!([1, 2])),
        ])
    );
    assert_eq!(
        host(&inv, "web3").vars,
        vars(&[
            ("backslash", json!("C:\\temp")),
            ("empty", json!("")),
            ("eq", json!("a=b")),
            ("escaped", json!("say \"hi\"")),
            ("neg", json!(-5)),
            ("python_str", json!("ab")),
            ("under", json!(1000)),
        ])
    );
}

#[test]
fn group_variables_are_the_rest_of_the_line() {
    let inv = load("vars_types.ini");
    assert_eq!(
        inv.group_vars("web").unwrap(),
        vars(&[
            ("empty", json!("")),
            ("flag", json!(true)),
            ("http_port", json!(8080)),
            ("list", json!([1, 2, 3])),
            ("lower", json!("false")),
            ("name", json!("web server # but kept after text")),
            ("padded", json!("007")),
            ("quoted", json!("quoted text")),
            ("spaced", json!("around")),
        ])
    );
    assert_eq!(host(&inv, "web1").vars["http_port"], json!(8080));
}

#[test]
fn numeric_ranges_pad_step_and_nest() {
    let inv = load("ranges_numeric.ini");
    assert_eq!(
        hosts_of(&inv, "web"),
        [
            "web01.example.com",
            "web02.example.com",
            "web03.example.com",
            "web04.example.com",
            "web05.example.com"
        ]
    );
    assert_eq!(hosts_of(&inv, "net"), ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
    assert_eq!(
        hosts_of(&inv, "odd"),
        ["node1", "node3", "node5", "node7", "node9"]
    );
    assert_eq!(
        hosts_of(&inv, "grid"),
        [
            "rack1-u08",
            "rack1-u09",
            "rack1-u10",
            "rack2-u08",
            "rack2-u09",
            "rack2-u10"
        ]
    );
    // A missing start counts from 0.
    assert_eq!(hosts_of(&inv, "zero"), ["h0", "h1", "h2"]);
}

#[test]
fn alphabetic_ranges_and_a_port_for_every_host() {
    let inv = load("ranges_alpha.ini");
    assert_eq!(
        hosts_of(&inv, "db"),
        [
            "db-a.example.com",
            "db-b.example.com",
            "db-c.example.com",
            "db-d.example.com",
            "db-e.example.com",
            "db-f.example.com"
        ]
    );
    // Letters count as Python's ascii_letters: a-z, then A-Z.
    assert_eq!(hosts_of(&inv, "pairs"), ["xy", "xz", "xA", "xB"]);
    assert_eq!(hosts_of(&inv, "stride"), ["sa", "sd", "sg"]);
    let ported = inv.hosts_of("ported").unwrap();
    assert_eq!(
        names(&ported),
        ["app1.example.com", "app2.example.com", "app3.example.com"]
    );
    for h in &ported {
        assert_eq!(h.port, Some(2222));
        assert_eq!(h.user.as_deref(), Some("deploy"));
        assert_eq!(h.vars["ansible_port"], json!(2222));
    }
}

#[test]
fn connection_settings_come_from_ansible_variables() {
    let inv = load("connection.ini");
    let web1 = host(&inv, "web1");
    assert_eq!(web1.address, "10.0.0.11");
    assert_eq!(web1.port, Some(2222));
    assert_eq!(web1.user.as_deref(), Some("deploy"));
    assert_eq!(web1.key_file.as_deref(), Some("~/.ssh/web.pem"));
    assert!(web1.become_);
    // ansible gives "yes" as text and its connection reads it as a boolean.
    assert_eq!(web1.vars["ansible_become"], json!("yes"));
    assert_eq!(web1.vars["ansible_port"], json!(2222));

    let web2 = host(&inv, "web2");
    assert_eq!(
        (web2.address.as_str(), web2.port),
        ("10.0.0.12", Some(2201))
    );
    assert_eq!(web2.user.as_deref(), Some("web"));
    assert!(web2.become_, "[web:vars] ansible_become=True");
    assert_eq!(web2.vars["ansible_become"], json!(true));

    assert!(
        !host(&inv, "web3").become_,
        "the host's false beats the group's True"
    );

    let v6 = host(&inv, "fe80::1");
    assert_eq!((v6.address.as_str(), v6.port), ("fe80::1", Some(2203)));
    assert!(v6.become_);
    let bare_v6 = host(&inv, "2001:db8::5");
    assert_eq!(bare_v6.port, None);

    let legacy = host(&inv, "legacy");
    assert_eq!(legacy.address, "10.0.0.99");
    assert_eq!(legacy.port, Some(2299));
    assert_eq!(legacy.user.as_deref(), Some("old"));
}

#[test]
fn explicit_all_ungrouped_and_hosts_sections() {
    let inv = load("sections.ini");
    // Hosts only in `all` are ungrouped too, added after those listed there (as ansible does).
    assert_eq!(hosts_of(&inv, "ungrouped"), ["loner", "solo"]);
    // `[web:hosts]` is `[web]`; two sections of one group add up.
    assert_eq!(hosts_of(&inv, "web"), ["web1", "web2"]);
    assert_eq!(host(&inv, "web2").vars["role"], json!("web"));
    assert_eq!(inv.children_of("all").unwrap(), ["ungrouped", "web"]);
}

#[test]
fn a_group_the_inventory_lacks_names_file_group_and_groups() {
    let inv = load("children.ini");
    let e = inv.hosts_of("webservers").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnknownGroup);
    assert_eq!(
        e.to_string(),
        "tests/fixtures/children.ini: the inventory has no group 'webservers'\n  \
         help: its groups are production, frontend, web, balancer, backend; add a [webservers] section or use one of them"
    );
}

#[test]
fn crlf_lines_and_a_byte_order_mark_are_read_like_plain_lines() {
    let text = "\u{feff}[web]\r\nweb1 ansible_port=2222\r\n\r\n[web:vars]\r\nrole=web\r\n";
    let inv = Inventory::parse(text, "crlf.ini").unwrap();
    assert_eq!(hosts_of(&inv, "web"), ["web1"]);
    assert_eq!(host(&inv, "web1").port, Some(2222));
    assert_eq!(host(&inv, "web1").vars["role"], json!("web"));
}

// ---- what is refused ----

#[test]
fn unreadable_files_name_the_path_and_the_os_error() {
    let e = Inventory::load("tests/fixtures/no-such.ini").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreadable);
    assert_eq!(
        e.to_string(),
        "tests/fixtures/no-such.ini: cannot read the inventory: No such file or directory (os error 2)\n  \
         help: check the path given with -i or `inventory =`"
    );
    let e = Inventory::load("tests/fixtures").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreadable);
    assert!(
        e.to_string()
            .starts_with("tests/fixtures: cannot read the inventory: Is a directory (os error 21)"),
        "{e}"
    );
}

#[test]
fn text_that_is_not_utf8_is_named_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("latin1.ini");
    // A comment line in Latin-1 is let through (as ansible does); a host line is not.
    std::fs::write(&file, b"# caf\xe9\n[web]\nweb1 owner=Ren\xe9\n").unwrap();
    let e = Inventory::load(&file).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Encoding);
    assert_eq!((e.line(), e.column()), (Some(3), Some(15)));
}

fn assert_refused(name: &str, kind: ErrorKind, expected: &str) {
    let (k, text) = error(name);
    assert_eq!(text, expected, "\n{text}");
    assert_eq!(k, kind, "{text}");
}

#[test]
fn a_bad_section_header() {
    assert_refused(
        "bad_section.ini",
        ErrorKind::Section,
        "tests/fixtures/bad_section.ini:4:1: '[web servers]' is no section header\n \
         4 | [web servers]\n   \
         | ^\n  \
         help: a section is [GROUP], [GROUP:children] or [GROUP:vars], and a group name has no spaces, ':' or ']'",
    );
}

#[test]
fn an_unknown_section_type() {
    assert_refused(
        "unknown_section_type.ini",
        ErrorKind::Section,
        "tests/fixtures/unknown_section_type.ini:4:5: unknown section type ':hostz' in [web:hostz]\n \
         4 | [web:hostz]\n   \
         |     ^\n  \
         help: a section is [web] (its hosts), [web:children] (its groups) or [web:vars] (its variables)",
    );
}

#[test]
fn text_after_a_section_header() {
    assert_refused(
        "section_trailing_text.ini",
        ErrorKind::Section,
        "tests/fixtures/section_trailing_text.ini:1:7: only a '#' comment may follow a section header, not '; the web tier'\n \
         1 | [web] ; the web tier\n   \
         |       ^\n  \
         help: write the comment with '#': [web] # the web tier",
    );
}

#[test]
fn a_range_that_counts_down() {
    assert_refused(
        "range_backwards.ini",
        ErrorKind::Range,
        "tests/fixtures/range_backwards.ini:3:4: range [5:1] counts down from 5 to 1: it gives no host\n \
         3 | web[5:1].example.com\n   \
         |    ^\n  \
         help: write the smaller bound first: [1:5]",
    );
}

#[test]
fn a_range_of_a_letter_and_a_number() {
    assert_refused(
        "range_mixed.ini",
        ErrorKind::Range,
        "tests/fixtures/range_mixed.ini:2:4: range [a:1] mixes numbers and letters or holds something else\n \
         2 | web[a:1].example.com\n   \
         |    ^\n  \
         help: both bounds are numbers ([1:5], [01:10]) or both single letters ([a:f])",
    );
}

#[test]
fn an_unterminated_range() {
    assert_refused(
        "range_unterminated.ini",
        ErrorKind::Range,
        "tests/fixtures/range_unterminated.ini:2:6: range '[1:3.example.com' has no closing ']'\n \
         2 |   web[1:3.example.com\n   \
         |      ^\n  \
         help: close it: web[01:05]",
    );
}

#[test]
fn a_range_padded_on_one_side() {
    assert_refused(
        "range_padding.ini",
        ErrorKind::Range,
        "tests/fixtures/range_padding.ini:2:4: range [01:5] pads '01' to 2 digits but not '5'\n \
         2 | web[01:5]\n   \
         |    ^\n  \
         help: give both bounds the same width: [01:05]",
    );
}

#[test]
fn a_range_with_step_zero() {
    assert_refused(
        "range_step.ini",
        ErrorKind::Range,
        "tests/fixtures/range_step.ini:2:4: range [1:5:0] has step '0', not a positive whole number\n \
         2 | web[1:5:0]\n   \
         |    ^\n  \
         help: the step counts how far each host is from the last: [1:10:2] gives 1, 3, 5, 7, 9",
    );
}

#[test]
fn a_host_listed_twice_in_a_group() {
    assert_refused(
        "duplicate_host.ini",
        ErrorKind::DuplicateHost,
        "tests/fixtures/duplicate_host.ini:4:1: host 'web1' is listed twice in group 'web': first at line 2\n \
         4 | web1\n   \
         | ^\n  \
         help: list a host once in a group, with all its variables on that line (line 2)",
    );
}

#[test]
fn a_range_that_lists_a_host_again() {
    assert_refused(
        "duplicate_host_range.ini",
        ErrorKind::DuplicateHost,
        "tests/fixtures/duplicate_host_range.ini:7:1: host 'web2' is listed twice in group 'canary': first at line 6\n \
         7 | web[2:4]\n   \
         | ^\n  \
         help: list a host once in a group, with all its variables on that line (line 6)",
    );
}

#[test]
fn one_host_given_two_values_on_two_lines() {
    assert_refused(
        "conflicting_host_vars.ini",
        ErrorKind::ConflictingHostVariable,
        "tests/fixtures/conflicting_host_vars.ini:5:6: host 'web1' gets ansible_port=2200 here but ansible_port=2222 at line 2\n \
         5 | web1 ansible_port=2200\n   \
         |      ^\n  \
         help: a host has one set of variables whichever group lists it (ansible would keep the last value everywhere): set ansible_port on one line, or per group in [GROUP:vars]",
    );
}

#[test]
fn a_child_group_never_defined() {
    assert_refused(
        "undefined_child.ini",
        ErrorKind::UndefinedChild,
        "tests/fixtures/undefined_child.ini:3:1: [production:children] names group 'database', which this inventory never defines\n \
         3 | database\n   \
         | ^\n  \
         help: define it with a [database] section (or fix the name); the groups here are all, ungrouped, production, web, db",
    );
}

#[test]
fn variables_of_a_group_never_defined() {
    assert_refused(
        "undefined_vars_group.ini",
        ErrorKind::UndefinedGroup,
        "tests/fixtures/undefined_vars_group.ini:4:2: [wbe:vars] sets variables of group 'wbe', which this inventory never defines\n \
         4 | [wbe:vars]\n   \
         |  ^\n  \
         help: add a [wbe] section with its hosts (or fix the name); the groups here are all, ungrouped, web",
    );
}

#[test]
fn a_vars_line_without_equals() {
    assert_refused(
        "vars_without_equals.ini",
        ErrorKind::GroupVariable,
        "tests/fixtures/vars_without_equals.ini:6:1: expected key=value in [web:vars], got 'ansible_user deploy'\n \
         6 | ansible_user deploy\n   \
         | ^\n  \
         help: a [web:vars] line sets one variable: ansible_user=VALUE; hosts go in [web]",
    );
}

#[test]
fn groups_that_contain_each_other() {
    assert_refused(
        "child_cycle.ini",
        ErrorKind::ChildCycle,
        "tests/fixtures/child_cycle.ini:8:1: groups contain each other: c → a → b → c\n \
         8 | a\n   \
         | ^\n  \
         help: remove 'a' here, or 'c' from [b:children] at line 5",
    );
}

#[test]
fn a_port_that_is_no_number() {
    // The group's value is the one web1 gets, so it is reported where the group sets it.
    assert_refused(
        "bad_port.ini",
        ErrorKind::ConnectionVariable,
        "tests/fixtures/bad_port.ini:6:1: ansible_port of host 'web1' is 'ssh', not a port number from 1 to 65535\n \
         6 | ansible_port=ssh\n   \
         | ^\n  \
         help: write ansible_port=2222, or the host as HOST:2222",
    );
}

#[test]
fn a_port_out_of_range() {
    assert_refused(
        "port_out_of_range.ini",
        ErrorKind::ConnectionVariable,
        "tests/fixtures/port_out_of_range.ini:2:1: ansible_port of host 'web1' is 70000, not a port number from 1 to 65535\n \
         2 | web1:70000\n   \
         | ^\n  \
         help: write ansible_port=2222, or the host as HOST:2222",
    );
}

#[test]
fn become_that_is_no_boolean() {
    assert_refused(
        "bad_become.ini",
        ErrorKind::ConnectionVariable,
        "tests/fixtures/bad_become.ini:2:6: ansible_become of host 'web1' is 'maybe', not a yes/no value\n \
         2 | web1 ansible_become=maybe\n   \
         |      ^\n  \
         help: write ansible_become=true (or false; yes/no, on/off and 1/0 work too)",
    );
}

#[test]
fn an_unclosed_quote() {
    assert_refused(
        "unclosed_quote.ini",
        ErrorKind::Quoting,
        "tests/fixtures/unclosed_quote.ini:2:11: the quote \" opened here is never closed\n \
         2 | web1 motd=\"hello\n   \
         |           ^\n  \
         help: close it on the same line: key=\"some value\"",
    );
}

#[test]
fn a_word_after_the_host_without_equals() {
    assert_refused(
        "host_word_without_equals.ini",
        ErrorKind::HostVariable,
        "tests/fixtures/host_word_without_equals.ini:2:26: expected key=value after the host, got 'sudo'\n \
         2 | web1 ansible_user=deploy sudo\n   \
         |                          ^\n  \
         help: after the host come variables: sudo=VALUE (quote a value with spaces: key=\"a b\")",
    );
}

#[test]
fn a_semicolon_comment_after_a_host() {
    assert_refused(
        "semicolon_after_host.ini",
        ErrorKind::HostVariable,
        "tests/fixtures/semicolon_after_host.ini:2:6: expected key=value after the host, got ';'\n \
         2 | web1 ; old host\n   \
         |      ^\n  \
         help: ';' starts a comment only at the start of a line: use '#' after a host",
    );
}

#[test]
fn errors_escape_what_would_act_on_a_terminal() {
    let e = Inventory::parse("[web]\nweb1 x\u{1b}[31m\n", "esc.ini").unwrap_err();
    let text = e.to_string();
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(text.contains("x\\u{1b}[31m"), "{text}");
}

#[test]
fn a_large_range_expands_and_one_beyond_the_limit_is_refused() {
    let inv = Inventory::parse("[big]\nn[00001:20000]\n", "big.ini").unwrap();
    let hosts = inv.hosts_of("big").unwrap();
    assert_eq!(hosts.len(), 20_000);
    assert_eq!(
        (hosts[0].name.as_str(), hosts[19_999].name.as_str()),
        ("n00001", "n20000")
    );
    let e = Inventory::parse("[big]\nn[1:99999999]\n", "big.ini").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Range);
    assert_eq!(
        e.message(),
        format!(
            "range [1:99999999] gives more than {} hosts",
            pipeline_inventory::MAX_EXPANSION
        )
    );
}
