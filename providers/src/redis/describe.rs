//! `describe` of a flag store: its primary and mirrors (supervised redis-servers under
//! `.pipeline/run/<store>/primary` and `mirror-N`).

use pipeline_engine::provider::{Description, Endpoint, JsonMap, Serves};
use pipeline_host::supervised;
use std::path::Path;

pub fn flags(base: &Path, record: &JsonMap) -> Description {
    let mut d = Description {
        serves: Serves::Store,
        ..Default::default()
    };
    let primary_dir = base.join("primary");
    let primary = supervised::process(&primary_dir, "primary");
    d.health = supervised::health(primary.as_ref(), &primary_dir);
    d.processes.extend(primary);
    d.logs.push(supervised::log(&primary_dir, "primary"));
    let mirrors = record
        .get("mirror_urls")
        .and_then(|v| v.as_array())
        .map_or(0, Vec::len);
    for i in 0..mirrors {
        let dir = base.join(format!("mirror-{i}"));
        let role = format!("mirror-{i}");
        d.processes.extend(supervised::process(&dir, &role));
        d.logs.push(supervised::log(&dir, &role));
    }
    let address = record
        .get("address")
        .and_then(|v| v.as_str())
        .unwrap_or("127.0.0.1");
    let password = record
        .get("password")
        .and_then(|v| v.as_str())
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    if let Some(port) = record.get("port").and_then(|v| v.as_u64()) {
        // What clients use is the primary; a probe asks it too (PING, after AUTH).
        for role in ["serve", "primary"] {
            d.endpoints.push(Endpoint {
                role: role.into(),
                url: format!("redis://{}", hostport(address, port)),
                secret: password.clone(),
                expect_status: None,
            });
        }
    }
    d.metrics = d.processes.iter().filter_map(supervised::procfs).collect();
    d
}

fn hostport(host: &str, port: u64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
