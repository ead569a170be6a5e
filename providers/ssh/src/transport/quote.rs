//! The one quoter for the remote shell: every argument of a remote command passes through it.
//!
//! OpenSSH joins the words after the destination with spaces and hands the line to the login
//! shell of the remote user (`$SHELL -c LINE`), so each argument must be one shell word there.
//! A POSIX shell is assumed (sh, bash, dash, zsh): inside single quotes nothing is special but
//! the quote itself, which becomes `'\''`.

use super::Error;

/// `arg` as one word of a POSIX shell: bare when it has only harmless characters, else in single
/// quotes. A NUL cannot reach a remote program through a command line: an error.
pub fn quote(arg: &str) -> Result<String, Error> {
    if arg.contains('\0') {
        return Err(Error::Invalid(format!(
            "an argument of a remote command holds a NUL byte, which no command line can carry: {:?}",
            arg
        )));
    }
    // `=` is left out so the first word is never read as an assignment, `~` and `#` so nothing
    // expands or starts a comment.
    let bare = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:,+@%".contains(&b));
    if bare {
        return Ok(arg.to_string());
    }
    let mut q = String::with_capacity(arg.len() + 2);
    q.push('\'');
    for c in arg.chars() {
        if c == '\'' {
            q.push_str("'\\''");
        } else {
            q.push(c);
        }
    }
    q.push('\'');
    Ok(q)
}

/// The command line for `argv`: each argument quoted, joined by spaces. An empty `argv` is an
/// error (ssh would open an interactive shell).
pub fn command_line(argv: &[&str]) -> Result<String, Error> {
    if argv.is_empty() {
        return Err(Error::Invalid(
            "a remote command needs at least a program name".to_string(),
        ));
    }
    let words = argv
        .iter()
        .map(|a| quote(a))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// What a local `sh` makes of the line: the arguments `printf '%s\0'` receives.
    fn through_sh(argv: &[&str]) -> Vec<String> {
        let mut full = vec!["printf", "%s\\0"];
        full.extend_from_slice(argv);
        let line = command_line(&full).unwrap();
        let out = Command::new("sh").arg("-c").arg(&line).output().unwrap();
        assert!(out.status.success(), "sh -c {line}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut words: Vec<String> = text.split('\0').map(str::to_string).collect();
        assert_eq!(words.pop().as_deref(), Some(""), "output ends with NUL");
        words
    }

    const HOSTILE: &[&str] = &[
        "",
        "plain",
        "two words",
        "it's",
        "''",
        "\"double\"",
        "$(touch /tmp/pipeline-quote-pwned)",
        "`touch /tmp/pipeline-quote-pwned`",
        "$HOME",
        "${PATH}",
        "line one\nline two\n",
        "\ttab and trailing space ",
        "*",
        "~",
        "~root",
        "#not a comment",
        "a;b&&c||d|e<f>g",
        "FOO=bar",
        "-n",
        "--",
        "\\",
        "\\'",
        "!history",
        "ünïcödé ✓",
        "\u{1b}[31mred",
        "%s %d",
    ];

    #[test]
    fn hostile_arguments_arrive_byte_exact_through_a_posix_shell() {
        assert_eq!(through_sh(HOSTILE), HOSTILE);
        assert!(!std::path::Path::new("/tmp/pipeline-quote-pwned").exists());
    }

    #[test]
    fn harmless_words_stay_bare_and_the_rest_is_single_quoted() {
        assert_eq!(quote("/usr/bin/install").unwrap(), "/usr/bin/install");
        assert_eq!(quote("-m").unwrap(), "-m");
        assert_eq!(quote("").unwrap(), "''");
        assert_eq!(quote("a b").unwrap(), "'a b'");
        assert_eq!(quote("it's").unwrap(), "'it'\\''s'");
        assert_eq!(quote("A=1").unwrap(), "'A=1'", "never an assignment");
        assert_eq!(quote("~").unwrap(), "'~'");
    }

    #[test]
    fn nul_and_empty_commands_are_refused() {
        assert!(matches!(quote("a\0b"), Err(Error::Invalid(_))));
        assert!(matches!(command_line(&[]), Err(Error::Invalid(_))));
    }
}
