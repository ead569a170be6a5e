# pipeline's per-task event stream: one JSON object a line, read live by the runner
# (providers/ssh/src/ansible.rs). It prints no module arguments, and nothing of a `no_log` task
# but its name, its status and "(output hidden by no_log)".

from __future__ import annotations

DOCUMENTATION = """
    name: pipeline_events
    type: notification
    short_description: one JSON line per task result, for pipeline
    description:
      - Writes task starts, results (ok, changed, failed, unreachable, skipped) and the recap
        as JSON lines to the file descriptor in PIPELINE_EVENTS_FD (or the file in
        PIPELINE_EVENTS_FILE). Never writes module arguments; a no_log task's output is hidden.
    requirements:
      - enabled in callbacks_enabled
"""

import difflib
import json
import os

from ansible.plugins.callback import CallbackBase

HIDDEN = "(output hidden by no_log)"
# A message longer than this is cut: events are progress lines, not logs.
MAX_MSG = 4000


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "pipeline_events"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._out = None
        fd = os.environ.get("PIPELINE_EVENTS_FD")
        path = os.environ.get("PIPELINE_EVENTS_FILE")
        try:
            if fd:
                self._out = os.fdopen(int(fd), "w", buffering=1, encoding="utf-8", closefd=False)
            elif path:
                self._out = open(path, "a", buffering=1, encoding="utf-8")
        except (OSError, ValueError):
            self._out = None
        if self._out is None:
            self.disabled = True

    def _emit(self, event):
        if self._out is None:
            return
        try:
            self._out.write(json.dumps(event, default=str) + "\n")
        except OSError:
            # The runner is gone (it kills this process group when it goes): nothing to tell.
            self._out = None

    @staticmethod
    def _role(task):
        role = getattr(task, "_role", None)
        if role is None:
            return None
        try:
            return role.get_name(include_role_fqcn=False)
        except TypeError:
            return role.get_name()

    @staticmethod
    def _task_name(task):
        return task.name or task.action

    @staticmethod
    def _hidden(result):
        no_log = result.task.no_log
        return (isinstance(no_log, bool) and no_log) or bool(result.result.get("_ansible_no_log"))

    def _event(self, kind, result, msg=None, diff=None, **extra):
        event = {
            "event": kind,
            "host": result.host.get_name(),
            "task": result.task_name or self._task_name(result.task),
            "role": self._role(result.task),
            "msg": msg,
            "diff": diff,
        }
        event.update(extra)
        self._emit(event)

    @staticmethod
    def _cut(text):
        if text is None:
            return None
        text = str(text)
        return text if len(text) <= MAX_MSG else text[: MAX_MSG - 3] + "..."

    def _message(self, result, failed=False):
        if self._hidden(result):
            return HIDDEN
        r = result.result
        parts = []
        msg = r.get("msg")
        if msg:
            parts.append(str(msg))
        if failed:
            # A command's own words say why it failed; its arguments are never printed.
            for key in ("stderr", "module_stderr", "stdout", "module_stdout"):
                value = r.get(key)
                if value and str(value).strip() and str(value).strip() not in parts:
                    parts.append(str(value).strip())
                    break
            if not parts:
                for item in r.get("results") or []:
                    if isinstance(item, dict) and item.get("failed") and item.get("msg"):
                        parts.append(str(item["msg"]))
            exc = r.get("exception")
            if not parts and exc:
                parts.append(str(exc).strip().splitlines()[-1])
        return self._cut("\n".join(parts)) if parts else None

    @staticmethod
    def _diff_text(d, r):
        if not isinstance(d, dict):
            return None
        if "prepared" in d:
            return str(d["prepared"])
        before, after = d.get("before"), d.get("after")
        if before is None and after is None:
            return None
        if not isinstance(before, str):
            before = json.dumps(before, indent=2, sort_keys=True, default=str) if before is not None else ""
        if not isinstance(after, str):
            after = json.dumps(after, indent=2, sort_keys=True, default=str) if after is not None else ""
        if before == after:
            return None
        # after_header is often a controller-side temp file: name the destination instead.
        name = d.get("before_header") or r.get("dest") or r.get("path")
        lines = difflib.unified_diff(
            before.splitlines(True),
            after.splitlines(True),
            fromfile="%s (before)" % name if name else "before",
            tofile="%s (after)" % name if name else "after",
        )
        out = []
        for line in lines:
            out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
        return "".join(out) or None

    def _diff(self, result):
        if self._hidden(result):
            return None
        r = result.result
        diffs = []
        sources = [(r.get("diff"), r)]
        for item in r.get("results") or []:
            if isinstance(item, dict) and not item.get("_ansible_no_log"):
                sources.append((item.get("diff"), item))
        for d, owner in sources:
            for one in d if isinstance(d, list) else [d]:
                text = self._diff_text(one, owner)
                if text:
                    diffs.append(text)
        return "".join(diffs) or None

    def v2_playbook_on_start(self, playbook):
        # Tells the runner the plugin is loaded: a run without this line reported nothing.
        self._emit({"event": "playbook_start", "host": None, "task": None, "role": None,
                    "msg": None, "diff": None})

    def v2_runner_on_start(self, host, task):
        self._emit({
            "event": "task_start",
            "host": host.get_name(),
            "task": self._task_name(task),
            "role": self._role(task),
            "msg": None,
            "diff": None,
        })

    def v2_runner_on_ok(self, result):
        if result.is_changed():
            self._event("changed", result, self._message(result), self._diff(result))
        else:
            self._event("ok", result, self._message(result))

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._event("failed", result, self._message(result, failed=True), self._diff(result),
                    ignored=bool(ignore_errors))

    def v2_runner_on_unreachable(self, result):
        self._event("unreachable", result, self._message(result, failed=True))

    def v2_runner_on_skipped(self, result):
        msg = None if self._hidden(result) else result.result.get("skip_reason")
        self._event("skipped", result, self._cut(msg))

    def v2_playbook_on_stats(self, stats):
        for host in sorted(stats.processed.keys()):
            s = stats.summarize(host)
            self._emit({
                "event": "recap",
                "host": host,
                "task": None,
                "role": None,
                "msg": None,
                "diff": None,
                "stats": {
                    "ok": s.get("ok", 0),
                    "changed": s.get("changed", 0),
                    "failed": s.get("failures", 0),
                    "unreachable": s.get("unreachable", 0),
                    "skipped": s.get("skipped", 0),
                    "rescued": s.get("rescued", 0),
                    "ignored": s.get("ignored", 0),
                },
            })
