//! `preview`: a small markdown preview microservice.
//!
//! The crate is deliberately dependency-free (std only) so it builds offline in
//! seconds from a copy of this directory. The binary (`src/main.rs`) wires the
//! pieces together:
//!
//! * [`markdown`] — a Markdown subset renderer with HTML escaping,
//! * [`json`] — a minimal JSON parser and string serialiser,
//! * [`http`] — HTTP/1.1 request parsing and response writing,
//! * [`app`] — routing and endpoint handlers,
//! * [`server`] — the `TcpListener` accept loop and worker thread pool,
//! * [`flags`] — feature flags (`tables_enabled()`),
//! * [`fault`] — optional fault injection for canary tests.

pub mod app;
pub mod config;
pub mod fault;
pub mod flags;
pub mod http;
pub mod json;
pub mod markdown;
pub mod server;
