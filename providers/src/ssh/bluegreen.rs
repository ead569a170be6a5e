//! Blue-green updates of the ssh `service` (`update = { strategy = "blue-green" }`).
//!
//! Every host runs the instances of one of two port slots: A is units `<svc>-0` …
//! `<svc>-<r-1>` on `port` … `port+r-1`, B is units `<svc>-<r>` … `<svc>-<2r-1>` on `port+r` …
//! `port+2r-1` (a unit's number is its port minus `port`, as `read` expects). An update that
//! changes what the units run (release, `run`, `env`, `secret_env`, `port`, `replicas`, the
//! hosts) starts the new release on the other slot beside the old one on every host at once
//! (the role with `pipeline_only`: the old units untouched), checks every new instance from
//! here, and only when all are healthy switches traffic at once: every balancer in front of the
//! service (a peer whose provider has `canary_weights`) gives the new servers 100 % and the old
//! 0 %; the record's `instances` then name the new ports, so the balancer's own update later in
//! the same apply (its routes changed at plan) renders them as its config. After
//! `drain_timeout` (default 5s) a full run of the role removes the old units (and old
//! releases). A new instance that fails: the new units are stopped and removed on every host,
//! the balancers were never touched, the old units keep serving, and the error names the host.
//!
//! A canary (`update = { strategy = "canary" }`) starts the new slot the same way, then,
//! before the switch, lets `crate::progressive` give the new servers a growing share of every
//! balancer's traffic step by step (`canary.steps`) while it judges their answers (the
//! balancer's access log, streamed from its host) against the old servers'. A pass switches as
//! blue-green does; a failed judgement, a new instance failing its health check 3 times in a
//! row, Ctrl-C or `pipeline rollback` sends all the traffic back to the old servers and stops
//! the new units on every host: the update fails naming why, and the record stays as it was.
//!
//! An update with no balancer in front is refused before anything changes (its clients would
//! keep calling the old ports). The plan predicts the slot with the same rule (`next_units`),
//! so the balancer's change is in the plan. There is no standby: `pipeline rollback` does not
//! apply (the old units are gone after the drain); going back is another update.

use super::*;
use pipeline_engine::provider::{Aborted, ErrorKind};

const WEIGHTS: &str = "canary_weights";
const CLEAR: &str = "canary_clear";

/// What the units run: a change to any of these is a new slot.
const UNIT_INPUTS: &[&str] = &[
    "source",
    "revision",
    "build",
    "artifact",
    "run",
    "port",
    "replicas",
    "env",
    "secret_env",
];

fn strategy(c: &ValueMap) -> Option<String> {
    c.get("update").map(|u| u.unmarked().0).and_then(|u| {
        u.get("strategy")
            .and_then(Value::as_str)
            .map(str::to_string)
    })
}

/// Blue-green or canary: updates that start the new release on the other port slot.
pub(super) fn is_blue_green(c: &ValueMap) -> bool {
    matches!(strategy(c).as_deref(), Some("blue-green") | Some("canary"))
}

fn is_canary(c: &ValueMap) -> bool {
    strategy(c).as_deref() == Some("canary")
}

/// The progressive canary of the new units `new` (healthy, no traffic yet) against the old
/// servers: Ok when it passed (the balancers still give the new servers the last step's share).
async fn canary(
    job: &Job<'_>,
    p: &Prepared,
    new: &[u16],
    old_servers: &[String],
    new_servers: &[String],
    step: &Step,
) -> Result<(), Aborted> {
    let c = job.c;
    let (path, expect, port) = (health_path(c), expect_status(c), port_of(c));
    let targets: Vec<(String, String, u16)> = p
        .hosts
        .iter()
        .flat_map(|h| {
            new.iter()
                .map(move |i| (h.name.clone(), h.address.clone(), port + i))
        })
        .collect();
    let mut fails = vec![0u32; targets.len()];
    // A new instance whose check failed 3 times in a row (one can be a blip) is an alert.
    let mut health = move || {
        for (k, (name, address, port)) in targets.iter().enumerate() {
            match check_once(address, *port, path.as_deref(), expect) {
                Ok(()) => fails[k] = 0,
                Err(e) => {
                    fails[k] += 1;
                    if fails[k] >= 3 {
                        return Err(format!(
                            "the new instance on host {name} ({address}:{port}) failed its health check 3 times in a row: {e}; `pipeline logs` shows its journal"
                        ));
                    }
                }
            }
        }
        Ok(())
    };
    let arms_replicas = (p.hosts.len() * new.len()) as u32;
    let (work_dir, block, config) = (job.ctx.work_dir.clone(), job.addr.to_string(), c.clone());
    let (baseline, candidate) = (old_servers.to_vec(), new_servers.to_vec());
    let (progress, peers, cancel) = (
        step.progress.clone(),
        step.peers.clone(),
        step.cancel.clone(),
    );
    tokio::task::spawn_blocking(move || {
        crate::progressive::analyze(
            &work_dir,
            &block,
            &config,
            crate::progressive::Arms {
                baseline,
                candidate,
                replicas: arms_replicas,
                health: &mut health,
            },
            progress,
            cancel.flag(),
            &peers,
        )
    })
    .await
    .unwrap_or_else(|e| {
        Err(Aborted {
            step: 0,
            reason: format!("the canary analysis failed: {e}"),
        })
    })
}

fn drain_timeout(c: &ValueMap) -> Duration {
    c.get("update")
        .map(|u| u.unmarked().0)
        .and_then(|u| {
            u.get("drain_timeout")
                .and_then(Value::as_str)
                .and_then(parse_duration)
        })
        .unwrap_or(Duration::from_secs(5))
}

/// Whether the configuration (with its build id and release; Unknown: not known yet) runs
/// something other than the prior record's units do.
fn changes_units(
    c: &ValueMap,
    build_id: &Value,
    release: &Value,
    hosts: &[String],
    prior: &JsonMap,
) -> bool {
    let differs = |now: Option<&Value>, k: &str| {
        let now = now.map(|v| v.unmarked().0).unwrap_or(Value::Null);
        let before = prior.get(k).map(Value::from_json).unwrap_or(Value::Null);
        !now.is_known() || now != before
    };
    UNIT_INPUTS.iter().any(|k| differs(c.get(*k), k))
        || differs(Some(build_id), "build_id")
        || differs(Some(release), "release")
        || prior_hosts(prior).map_or(true, |p| {
            p.iter()
                .map(|h| h.name.as_str())
                .ne(hosts.iter().map(String::as_str))
        })
}

/// The units the configuration's instances run as after an update from `prior`, and whether
/// the update moves them to a new slot. Without a change to what they run, the live units
/// stay; else the first slot (A, then B) whose unit names and ports are all free of the live
/// ones. Err: neither is (a `port` or `replicas` change that overlaps the live slot).
pub(super) fn next_units(
    c: &ValueMap,
    build_id: &Value,
    release: &Value,
    hosts: &[String],
    prior: &JsonMap,
) -> Result<(Vec<u16>, bool), ProviderError> {
    let r = replicas_of(c);
    let port = u32::from(port_of(c));
    let live = recorded_idxs(prior);
    if !changes_units(c, build_id, release, hosts, prior) && live.len() == usize::from(r) {
        return Ok((live, false));
    }
    let prior_port = u32::from(port_of(&prior_cfg(prior)));
    let live_ports: Vec<u32> = live.iter().map(|i| prior_port + u32::from(*i)).collect();
    for first in [0, r] {
        let cand: Vec<u16> = (first..first + r).collect();
        let clash = cand
            .iter()
            .any(|i| live.contains(i) || live_ports.contains(&(port + u32::from(*i))));
        if !clash && port + u32::from(first + r) - 1 <= 65535 {
            return Ok((cand, true));
        }
    }
    let shown: Vec<String> = live_ports.iter().map(u32::to_string).collect();
    Err(ProviderError::invalid_config(format!(
        "blue-green: the running instances listen on port(s) {} and neither slot of port {port} with {r} replica(s) (ports {}…{} or {}…{}) is free of them",
        shown.join(", "),
        port,
        port + u32::from(r) - 1,
        port + u32::from(r),
        port + 2 * u32::from(r) - 1
    ))
    .help("move `port` past the running slot (at least 2 × replicas away), or change it with strategy = \"rolling\" first"))
}

/// The units a create or rolling update works on: slot A; slot B when a blue-green update
/// left the instances there and `port` and `replicas` are as they were, so that switching the
/// strategy to rolling updates them in place (behind the same balancer servers) rather than
/// moving them.
pub(super) fn rolling_units(c: &ValueMap, prior: Option<&JsonMap>) -> Vec<u16> {
    let r = replicas_of(c);
    let slot_b: Vec<u16> = (r..2 * r).collect();
    match prior {
        Some(p) if port_of(&prior_cfg(p)) == port_of(c) && recorded_idxs(p) == slot_b => slot_b,
        _ => (0..r).collect(),
    }
}

/// `ADDRESS:PORT` of each instance (what a balancer's upstream names).
fn servers(instances: &serde_json::Value) -> Vec<String> {
    instances
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("url").and_then(|u| u.as_str()))
        .map(|u| {
            u.trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string()
        })
        .collect()
}

/// Stops and removes units `units` of the service on every host (a failed new slot).
const STOP: &str = r#"s=$1
shift
for u in "$@"; do
  systemctl disable --now "pipeline-$u.service" >/dev/null 2>&1 || true
  rm -f -- "/etc/systemd/system/pipeline-$u.service" "/etc/pipeline/$s/$u.env" "/etc/pipeline/$s/$u.secret.env"
done
systemctl daemon-reload"#;

/// Stops the new units everywhere; what could not be stopped, as text for the error.
async fn stop_units(ctx: &ProviderCtx, token: &str, p: &Prepared, units: &[String]) -> String {
    let ssh = match conn::transport(ctx) {
        Ok(s) => s,
        Err(e) => return format!("; stopping the new units failed: {}", e.message),
    };
    let results = futures_join(p.hosts.iter().zip(&p.host_addrs).map(|(h, a)| {
        let ssh = ssh.clone();
        async move {
            let t = conn::target(&h.obj).map_err(|e| e.message)?;
            let mut argv: Vec<&str> = vec!["sh", "-c", STOP, "pipeline-stop", token];
            argv.extend(units.iter().map(String::as_str));
            ssh.run(
                &t,
                &conn::keys(&h.obj, a),
                Remote::Argv(&argv),
                None,
                Duration::from_secs(60),
            )
            .await
            .and_then(|o| o.checked())
            .map(|_| ())
            .map_err(|e| conn::error(e).message)
        }
    }))
    .await;
    let failed: Vec<String> = p
        .hosts
        .iter()
        .zip(results)
        .filter_map(|(h, r)| r.err().map(|e| format!("{}: {e}", h.name)))
        .collect();
    if failed.is_empty() {
        String::new()
    } else {
        format!(
            "; the new units could not be stopped on {} (the next apply replaces them)",
            failed.join("; ")
        )
    }
}

/// Takes the new servers out of the balancers that were switched (traffic back on the old).
async fn unswitch(step: &Step, balancers: &[String], new: &[String]) -> String {
    let mut args = JsonMap::new();
    args.insert("canary".into(), json!(new));
    let mut failed = Vec::new();
    for b in balancers {
        if let Err(e) = step.peers.action(b, CLEAR, &args).await {
            failed.push(format!("{b}: {}", e.message));
        }
    }
    if failed.is_empty() {
        String::new()
    } else {
        format!(
            "; taking the new servers out of the balancer failed: {}",
            failed.join("; ")
        )
    }
}

/// A blue-green update from `prior`; the units the instances now run as.
pub(super) async fn update(
    job: &Job<'_>,
    prior: &JsonMap,
    build_id: &str,
    step: &Step,
) -> Result<Vec<u16>, ProviderError> {
    let (ctx, addr, c, token) = (job.ctx, job.addr, job.c, job.token);
    let hosts = hosts_of(c)?;
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let (new, moves) = next_units(
        c,
        &Value::str(build_id),
        &Value::str(job.sha),
        &names,
        prior,
    )
    .map_err(|e| e.map_message(|m| format!("{addr}: {m}")))?;
    let gone: Vec<HostRef> = prior_hosts(prior)
        .unwrap_or_default()
        .into_iter()
        .filter(|o| !names.contains(&o.name))
        .collect();
    if !moves {
        // Nothing the units run changed (a health or update setting): the live units stay,
        // refreshed in place (the role restarts none of them).
        let p = prepare_at(ctx, addr, c, token, &new, step).await?;
        run_role_only(job, &p, &names, None, step).await?;
        return Ok(new);
    }
    let balancers: Vec<String> = step
        .peers
        .with_action(WEIGHTS)
        .await
        .into_iter()
        .map(|p| p.addr)
        .collect();
    if balancers.is_empty() {
        return Err(ProviderError::invalid_config(format!(
            "{addr}: a blue-green update on ssh hosts switches traffic through the balancer in front of the service, and none is recorded (a balancer whose routes name it); nothing was changed"
        ))
        .attr("update")
        .help("put a balancer in front (routes = { \"/\" = service.NAME }) and apply it first, or use update = { strategy = \"rolling\" }"));
    }
    let p = prepare_at(ctx, addr, c, token, &new, step).await?;
    let new_units: Vec<String> = new.iter().map(|i| format!("{token}-{i}")).collect();
    let started = Instant::now();
    step.progress(format!(
        "starting the new release beside the old on {} host(s): {}",
        names.len(),
        new_units.join(", ")
    ));
    let up = async {
        run_role_only(job, &p, &names, Some(&new_units), step).await?;
        let all: Vec<&HostRef> = p.hosts.iter().collect();
        wait_healthy_at(c, addr, &all, &new, step).await
    };
    // Every host is in this one step: any that stops answering ends it at once.
    let every = std::sync::Mutex::new(names.clone());
    let no_halt = std::sync::Mutex::new(None);
    let up = tokio::select! {
        r = up => r,
        e = watchdog(ctx, addr, &p, &every, &no_halt) => Err(e),
    };
    if let Err(e) = up {
        let stopped = stop_units(ctx, token, &p, &new_units).await;
        return Err(e.map_message(|m| {
            format!("{m}\nblue-green: the new release was stopped on every host{stopped}; the old one keeps serving and traffic never moved")
        }));
    }
    let healthy_after = started.elapsed();
    let old_servers = servers(prior.get("instances").unwrap_or(&serde_json::Value::Null));
    let rel = Value::str(job.sha);
    let new_servers =
        servers(&instances_at(&p.hosts, port_of(c), &new, &|_| rel.clone()).to_json());
    if is_canary(c) {
        if let Err(a) = canary(job, &p, &new, &old_servers, &new_servers, step).await {
            // The canary sent the traffic back already; its servers leave the balancers.
            let back = unswitch(step, &balancers, &new_servers).await;
            let stopped = stop_units(ctx, token, &p, &new_units).await;
            return Err(ProviderError::new(format!(
                "{addr}: canary aborted at {}%: {}\nthe new release was stopped on every host{back}{stopped}; all the traffic is back on the old one",
                a.step, a.reason
            ))
            .attr("canary")
            .help("the canary report (its path is printed after the apply) shows what the judge saw; fix the release and apply again"));
        }
    }
    // Switch: every balancer in front sends all of the service's traffic to the new servers.
    let mut args = JsonMap::new();
    args.insert("stable".into(), json!(old_servers));
    args.insert("canary".into(), json!(new_servers));
    args.insert("weight".into(), json!(100));
    let mut switched = Vec::new();
    let mut routes = 0;
    for b in &balancers {
        match step.peers.action(b, WEIGHTS, &args).await {
            Ok(out) => {
                routes += out
                    .output
                    .get("upstreams")
                    .and_then(|u| u.as_u64())
                    .unwrap_or(0);
                switched.push(b.clone());
            }
            Err(e) => {
                let back = unswitch(step, &switched, &new_servers).await;
                let stopped = stop_units(ctx, token, &p, &new_units).await;
                return Err(e.map_message(|m| {
                    format!("{addr}: switching {b} to the new release: {m}\nblue-green: the new release was stopped on every host{back}{stopped}; the old one keeps serving")
                }));
            }
        }
    }
    if routes == 0 {
        let back = unswitch(step, &switched, &new_servers).await;
        let stopped = stop_units(ctx, token, &p, &new_units).await;
        return Err(ProviderError::invalid_config(format!(
            "{addr}: no upstream of {} routes to the service's instances ({}), so traffic cannot be switched; the new release was stopped{back}{stopped}",
            balancers.join(", "),
            old_servers.join(", ")
        ))
        .attr("update")
        .help("route a balancer to the service (routes = { \"/\" = service.NAME }) and apply it, or use update = { strategy = \"rolling\" }"));
    }
    let drain = drain_timeout(c);
    step.progress(format!(
        "switched {routes} upstream(s) to {} at once ({:.1} s after the start); the old units stop after {}",
        new_servers.join(", "),
        healthy_after.as_secs_f64(),
        build::show_duration(drain)
    ));
    // Not cut short by Ctrl-C: traffic has moved, the record must say so.
    tokio::time::sleep(drain).await;
    // The old units go (a full run lists only the new ones), and so do hosts the service left.
    let mut cleanup = run_role_only(job, &p, &names, None, step).await;
    for g in &gone {
        if cleanup.is_ok() {
            cleanup = delete_on(ctx, addr, token, g, &format!("host.NAME[\"{}\"]", g.name)).await;
        }
    }
    if let Err(e) = cleanup {
        let now = applied_record(c, build_id, job.sha, &p.hosts, &new);
        return Err(e
            .map_message(|m| {
                format!("{m}\nblue-green: traffic is on the new release; stopping the old units failed (they keep running unused until the next update)")
            })
            .with_kind(ErrorKind::Fatal)
            .partial(now));
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> serde_json::Value {
        json!({"name": name, "address": format!("10.0.0.{}", name.len()), "transport": "ssh"})
    }

    fn prior(port: u16, replicas: u16, ports: &[u16]) -> JsonMap {
        let insts: Vec<serde_json::Value> = ports
            .iter()
            .map(|p| json!({"host": "a", "port": p, "url": format!("http://10.0.0.1:{p}")}))
            .collect();
        serde_json::from_value(json!({
            "on": host("a"), "port": port, "replicas": replicas, "run": "x",
            "build_id": "b1", "release": "r1", "instances": insts,
            "update": {"strategy": "blue-green"}
        }))
        .unwrap()
    }

    fn cfg(port: u16, replicas: u16, run: &str) -> ValueMap {
        let mut c = ValueMap::new();
        c.insert("on".into(), Value::from_json(&host("a")));
        c.insert("port".into(), Value::Number(port.into()));
        c.insert("replicas".into(), Value::Number(replicas.into()));
        c.insert("run".into(), Value::str(run));
        c
    }

    fn next(c: &ValueMap, release: &str, p: &JsonMap) -> Result<(Vec<u16>, bool), ProviderError> {
        next_units(c, &Value::str("b1"), &Value::str(release), &["a".into()], p)
    }

    #[test]
    fn a_new_release_alternates_between_the_two_slots() {
        // Live on slot A (8080): the new release goes to B (8081), and back.
        assert_eq!(
            next(&cfg(8080, 1, "x"), "r2", &prior(8080, 1, &[8080])).unwrap(),
            (vec![1], true)
        );
        assert_eq!(
            next(&cfg(8080, 1, "x"), "r2", &prior(8080, 1, &[8081])).unwrap(),
            (vec![0], true)
        );
        assert_eq!(
            next(&cfg(8080, 2, "x"), "r2", &prior(8080, 2, &[8080, 8081])).unwrap(),
            (vec![2, 3], true)
        );
        // A changed `run` moves too; an unknown release (a new build) does.
        assert_eq!(
            next(&cfg(8080, 1, "y"), "r1", &prior(8080, 1, &[8080]))
                .unwrap()
                .0,
            vec![1]
        );
        assert!(
            next_units(
                &cfg(8080, 1, "x"),
                &Value::str("b2"),
                &Value::Unknown,
                &["a".into()],
                &prior(8080, 1, &[8081])
            )
            .unwrap()
            .1
        );
    }

    #[test]
    fn a_rolling_update_stays_on_the_slot_blue_green_left() {
        assert_eq!(rolling_units(&cfg(8080, 1, "x"), None), vec![0]);
        assert_eq!(
            rolling_units(&cfg(8080, 1, "x"), Some(&prior(8080, 1, &[8081]))),
            vec![1]
        );
        assert_eq!(
            rolling_units(&cfg(8080, 1, "x"), Some(&prior(8080, 1, &[8080]))),
            vec![0]
        );
        // Another port or replica count: slot A.
        assert_eq!(
            rolling_units(&cfg(9000, 1, "x"), Some(&prior(8080, 1, &[8081]))),
            vec![0]
        );
        assert_eq!(
            rolling_units(&cfg(8080, 2, "x"), Some(&prior(8080, 1, &[8081]))),
            vec![0, 1]
        );
    }

    #[test]
    fn nothing_to_run_differently_keeps_the_live_slot() {
        assert_eq!(
            next(&cfg(8080, 1, "x"), "r1", &prior(8080, 1, &[8081])).unwrap(),
            (vec![1], false)
        );
    }

    #[test]
    fn a_slot_that_overlaps_the_live_one_is_refused() {
        // Live on 8081 (unit 1); port 8081: slot A is 8081 (taken), slot B unit 1 (taken).
        let e = next(&cfg(8081, 1, "x"), "r2", &prior(8080, 1, &[8081])).unwrap_err();
        assert!(e.message.contains("8081"), "{}", e.message);
        // More replicas from slot B: the new ones go past it.
        assert_eq!(
            next(&cfg(8080, 2, "x"), "r2", &prior(8080, 1, &[8081]))
                .unwrap()
                .0,
            vec![2, 3]
        );
    }

    #[test]
    fn blue_green_settings_are_checked() {
        let u = |kv: &[(&str, Value)]| {
            let mut m = ValueMap::new();
            for (k, v) in kv {
                m.insert(k.to_string(), v.clone());
            }
            Value::Map(m)
        };
        let bg = || ("strategy", Value::str("blue-green"));
        assert!(check_update(&u(&[bg()])).is_ok());
        assert!(check_update(&u(&[bg(), ("drain_timeout", Value::str("2s"))])).is_ok());
        assert!(check_update(&u(&[bg(), ("drain_timeout", Value::str("soon"))])).is_err());
        assert!(check_update(&u(&[bg(), ("max_unavailable", Value::Number(1.0))])).is_err());
        assert!(check_update(&u(&[("drain_timeout", Value::str("2s"))])).is_err());
        let mut c = cfg(65535, 1, "x");
        c.insert("update".into(), u(&[bg()]));
        let bad = validate(&c);
        assert!(
            bad.iter().any(|i| i.message.contains("blue-green")),
            "{bad:?}"
        );
    }
}
