//! `describe` of a local service instance: its active generation (the app), its slot, and a
//! running canary's candidates, from the supervisors' files under `.pipeline/run/<instance>/`.

use super::service::{canary_candidates, generation_dir, replica_dir};
use pipeline_engine::provider::{Description, Endpoint, JsonMap, Serves};
use pipeline_host::supervised;
use std::path::Path;

pub fn service(work_dir: &Path, addr: &str, record: &JsonMap) -> Description {
    let generation = record.get("generation").and_then(|g| g.as_u64());
    let gen_dir = generation_dir(work_dir, addr, generation);
    let slot_dir = replica_dir(work_dir, addr).join("slot");
    let mut d = Description {
        serves: Serves::App,
        ..Default::default()
    };
    let app = supervised::process(&gen_dir, "app").map(|mut p| {
        p.generation = generation;
        // The instance's address is its slot's port, stable across generations.
        p.port = record
            .get("port")
            .and_then(|v| v.as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .or(p.port);
        p
    });
    d.health = supervised::health(app.as_ref(), &gen_dir);
    d.processes.extend(app);
    d.processes.extend(supervised::process(&slot_dir, "slot"));
    for (g, dir) in canary_candidates(work_dir, addr, record) {
        if let Some(mut p) = supervised::process(&dir, "candidate") {
            p.generation = Some(g);
            d.processes.push(p);
            d.logs
                .push(supervised::log(&dir, &format!("candidate g{g}")));
        }
    }
    d.logs.insert(0, supervised::log(&gen_dir, "app"));
    d.logs.insert(1, supervised::log(&slot_dir, "slot"));
    d.metrics = d.processes.iter().filter_map(supervised::procfs).collect();
    if let Some(url) = record.get("url").and_then(|u| u.as_str()) {
        d.endpoints.push(Endpoint {
            role: "serve".into(),
            url: url.into(),
            ..Default::default()
        });
        d.endpoints.push(health_endpoint(url, record.get("health")));
    }
    d
}

/// What the health check asks: `tcp://host:port` for a TCP check, else a GET of its path
/// (without a health setting any answer below 500 counts).
fn health_endpoint(url: &str, health: Option<&serde_json::Value>) -> Endpoint {
    let h = health.and_then(|h| h.as_object());
    let get = |k: &str| h.and_then(|h| h.get(k));
    let base = url.trim_end_matches('/');
    if get("type").and_then(|t| t.as_str()) == Some("tcp") {
        let hostport = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"))
            .unwrap_or(base);
        return Endpoint {
            role: "health".into(),
            url: format!("tcp://{hostport}"),
            ..Default::default()
        };
    }
    let path = get("path").and_then(|p| p.as_str()).unwrap_or("/");
    Endpoint {
        role: "health".into(),
        url: format!("{base}{path}"),
        secret: None,
        expect_status: h.map(|h| {
            h.get("expect_status")
                .and_then(|s| s.as_f64())
                .map_or(200, |s| s as u16)
        }),
    }
}
