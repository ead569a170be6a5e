//! ansible-core playbook runs with per-task results.
