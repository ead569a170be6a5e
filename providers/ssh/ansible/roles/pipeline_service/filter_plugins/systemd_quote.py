"""Quoting for systemd unit files, so stack values never change a unit's meaning.

`systemd_exec(argv)` renders an argv list as one ExecStart= value: every argument in double
quotes with C escapes, `$` doubled (no variable expansion), `%` doubled (no specifiers), and a
lone `;` escaped (it would end the command). `systemd_env_file(map)` renders an
EnvironmentFile=: `KEY="value"` lines, backslash escapes for `"`, `\\`, `` ` `` and `$`,
optionally followed by lines the caller rendered itself.
"""

import re

from ansible.errors import AnsibleFilterError

_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Prefixes systemd reads off the first word of ExecStart= (after unquoting).
_EXEC_PREFIXES = "-@:+!|"


def _c_escape(s):
    out = []
    for ch in s:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "$":
            out.append("$$")
        elif ch == "%":
            out.append("%%")
        elif o < 0x20 or o == 0x7F:
            out.append("\\x%02x" % o)
        else:
            out.append(ch)
    return "".join(out)


def systemd_exec(argv):
    if isinstance(argv, (str, bytes)) or not argv:
        raise AnsibleFilterError("systemd_exec: want a non-empty list of arguments, got %r" % (argv,))
    words = []
    for i, arg in enumerate(argv):
        if not isinstance(arg, str):
            arg = str(arg)
        if "\x00" in arg:
            raise AnsibleFilterError("systemd_exec: argument %d has a NUL byte" % i)
        if i == 0:
            if arg == "" or arg[0] in _EXEC_PREFIXES:
                raise AnsibleFilterError(
                    "systemd_exec: the program %r is empty or starts with one of %s, "
                    "which systemd reads as a prefix" % (arg, _EXEC_PREFIXES)
                )
        if arg == ";":
            words.append("\\;")
        else:
            words.append('"' + _c_escape(arg) + '"')
    return " ".join(words)


def _env_escape(s):
    out = []
    for ch in s:
        if ch in '"\\`$':
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def systemd_env_file(env, extra=""):
    """The lines of `env`, then `extra` (already in EnvironmentFile= syntax) verbatim."""
    if extra is None:
        extra = ""
    if extra and not extra.endswith("\n"):
        extra += "\n"
    if env is None:
        return extra
    if not isinstance(env, dict):
        raise AnsibleFilterError("systemd_env_file: want a map of variables, got %r" % (type(env).__name__,))
    lines = []
    for key in sorted(env):
        value = env[key]
        if not isinstance(key, str) or not _ENV_KEY.match(key):
            raise AnsibleFilterError("systemd_env_file: %r is not a variable name" % (key,))
        value = "" if value is None else str(value)
        if "\x00" in value:
            raise AnsibleFilterError("systemd_env_file: the value of %s has a NUL byte" % key)
        lines.append('%s="%s"\n' % (key, _env_escape(value)))
    return "".join(lines) + extra


class FilterModule(object):
    def filters(self):
        return {"systemd_exec": systemd_exec, "systemd_env_file": systemd_env_file}
