//! The host an instance runs `on`.

use pipeline_engine::value::{Value, ValueMap};

/// The address of the host `on` names (a host object, or the first of a list of them); this
/// machine's loopback when there is none.
pub fn address(config: &ValueMap) -> String {
    config
        .get("on")
        .and_then(|on| match on.unmarked().0 {
            Value::List(l) => l
                .first()
                .and_then(|h| h.get("address").and_then(Value::as_str).map(str::to_string)),
            v => v.get("address").and_then(Value::as_str).map(str::to_string),
        })
        .unwrap_or_else(|| "127.0.0.1".into())
}
