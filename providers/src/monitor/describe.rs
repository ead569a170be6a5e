//! `describe` of a monitor: its daemon (supervised in `.pipeline/run/<monitor>/`) and where it serves.

use pipeline_engine::provider::{Description, Endpoint, JsonMap, MetricSource, Serves};
use pipeline_host::supervised;
use std::path::Path;

pub fn monitor(dir: &Path, record: &JsonMap) -> Description {
    let mut d = Description {
        serves: Serves::Observer,
        ..Default::default()
    };
    let daemon = supervised::process(dir, "daemon");
    d.health = supervised::health(daemon.as_ref(), dir);
    d.processes.extend(daemon);
    d.logs.push(supervised::log(dir, "daemon"));
    for (role, key) in [("serve", "url"), ("metrics", "metrics_url")] {
        if let Some(url) = record.get(key).and_then(|u| u.as_str()) {
            d.endpoints.push(Endpoint {
                role: role.into(),
                url: url.into(),
                ..Default::default()
            });
        }
    }
    d.metrics = d.processes.iter().filter_map(supervised::procfs).collect();
    if let Some(url) = record.get("metrics_url").and_then(|u| u.as_str()) {
        d.metrics.push(MetricSource::Url { url: url.into() });
    }
    d
}
