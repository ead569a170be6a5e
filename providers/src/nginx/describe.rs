//! `describe` of a balancer: its nginx (supervised, prefix `.pipeline/run/<balancer>/`), where
//! it listens, its logs and its access log.

use pipeline_engine::provider::{
    Description, Endpoint, Health, HealthState, JsonMap, LogSource, MetricSource, Serves,
};
use pipeline_host::supervised;
use pipeline_supervise::HealthCheck;
use std::path::Path;

pub fn balancer(work_dir: &Path, prefix: &Path, record: &JsonMap) -> Description {
    let address = record
        .get("address")
        .and_then(|v| v.as_str())
        .unwrap_or("127.0.0.1");
    let listen = record
        .get("listen")
        .and_then(|v| v.as_u64())
        .and_then(|p| u16::try_from(p).ok());
    let mut d = Description {
        serves: Serves::Proxy,
        ..Default::default()
    };
    let nginx = supervised::process(prefix, "nginx").map(|mut p| {
        p.port = listen.or(p.port);
        p
    });
    // nginx renames its processes and has no health check of its own: healthy is "runs, and
    // its port takes connections", looked at now.
    d.health = match (&nginx, listen) {
        (Some(p), Some(port)) if p.running => {
            match pipeline_supervise::check_once(address, port, &HealthCheck::tcp()) {
                Ok(()) => Health::new(HealthState::Healthy, None),
                Err(e) => Health::new(
                    HealthState::Unhealthy,
                    Some(format!("{address}:{port} does not take connections ({e})")),
                ),
            }
        }
        _ => supervised::health(nginx.as_ref(), prefix),
    };
    if let Some(p) = nginx {
        d.processes.push(p);
    }
    if let Some(url) = record.get("url").and_then(|u| u.as_str()) {
        d.endpoints.push(Endpoint {
            role: "serve".into(),
            url: url.into(),
            ..Default::default()
        });
    }
    if let Some(port) = listen {
        // A connection, not a request: a request would be proxied and counted as traffic.
        d.endpoints.push(Endpoint {
            role: "health".into(),
            url: format!("tcp://{}", hostport(address, port)),
            ..Default::default()
        });
    }
    d.logs.push(supervised::log(prefix, "nginx"));
    d.logs.push(LogSource::File {
        role: "error".into(),
        path: prefix.join("logs/error.log"),
    });
    if let Some(log) = record.get("access_log").and_then(|v| v.as_str()) {
        let p = Path::new(log);
        let path = if p.is_absolute() {
            p.to_path_buf()
        } else {
            work_dir.parent().unwrap_or(Path::new("/")).join(p)
        };
        d.logs.push(LogSource::File {
            role: "access".into(),
            path: path.clone(),
        });
        d.metrics.push(MetricSource::AccessLog {
            path,
            format: pipeline_host::access_log::FORMAT.into(),
        });
    }
    d.metrics
        .extend(d.processes.iter().filter_map(supervised::procfs));
    d
}

fn hostport(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
