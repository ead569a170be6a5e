//! Reaching remote hosts, for the `ssh` provider: `transport` runs commands and copies files
//! through the system OpenSSH client (multiplexed, with keepalives, host keys pinned), and
//! `ansible` runs the playbooks and roles that ship with the project through a pinned
//! ansible-core, reporting per-task results. Depends on no other workspace crate but the
//! inventory.

pub mod ansible;
pub mod transport;
