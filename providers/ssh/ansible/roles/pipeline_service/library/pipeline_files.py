#!/usr/bin/python
"""Writes many small files in one module run: a no-op deploy costs one round trip, not two per
file (copy and template stat, then chmod). Each file is replaced atomically (temp file in the
same directory, then rename) only when its content, mode or owner differs. Check mode and
--diff work; `diff: false` keeps contents out of the result (for secrets, with no_log).
"""

import grp
import os
import pwd
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: pipeline_files
short_description: Write a list of files (path, content, mode, owner, group) in one run
options:
  files:
    description: "[{path, content, mode, owner, group, key}]; mode an octal string; the keys of changed files are returned in changed_keys."
    type: list
    elements: dict
    required: true
  diff:
    description: Whether contents may appear in the diff.
    type: bool
    default: true
"""


def want_ids(f):
    uid = pwd.getpwnam(f.get("owner") or "root").pw_uid
    gid = grp.getgrnam(f.get("group") or "root").gr_gid
    return uid, gid


def main():
    module = AnsibleModule(
        argument_spec=dict(
            files=dict(type="list", elements="dict", required=True),
            diff=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    changed_paths = []
    changed_keys = []
    diffs = []
    for f in module.params["files"]:
        path = f["path"]
        content = (f.get("content") or "").encode("utf-8")
        mode = int(str(f.get("mode") or "0644"), 8)
        try:
            uid, gid = want_ids(f)
        except KeyError as e:
            module.fail_json(msg="%s: unknown user or group %s" % (path, e))
        before = None
        try:
            st = os.lstat(path)
            with open(path, "rb") as h:
                before = h.read()
            same = (
                before == content
                and (st.st_mode & 0o7777) == mode
                and st.st_uid == uid
                and st.st_gid == gid
            )
        except FileNotFoundError:
            same = False
        if same:
            continue
        changed_paths.append(path)
        if f.get("key") is not None and f["key"] not in changed_keys:
            changed_keys.append(f["key"])
        if module._diff and module.params["diff"]:
            diffs.append(
                {
                    "before_header": path,
                    "after_header": path,
                    "before": (before or b"").decode("utf-8", "replace"),
                    "after": content.decode("utf-8", "replace"),
                }
            )
        if module.check_mode:
            continue
        d = os.path.dirname(path)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".pipeline-")
        try:
            with os.fdopen(fd, "wb") as h:
                os.fchmod(h.fileno(), mode)
                os.fchown(h.fileno(), uid, gid)
                h.write(content)
                h.flush()
                os.fsync(h.fileno())
            os.rename(tmp, path)
        except Exception as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            module.fail_json(msg="%s: %s" % (path, e))
    result = dict(changed=bool(changed_paths), changed_paths=changed_paths, changed_keys=changed_keys)
    if diffs:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
