//! examples/itrust: the WAR builds byte-reproducibly with javac and jar, and runs for real on
//! this machine: tomcat-instance.sh starts one Tomcat 10 (Debian's tomcat10-common, no system
//! service) on a free port against a MariaDB server this test starts in a temp dir
//! (mariadb-install-db + mariadbd, Debian's mariadb-server-core). .ci/run installs them all.
//!
//! The story: build v1 twice (same sha256) and v2; run v1, check /health, the JSON API and the
//! page; the database goes away (/health 500) and comes back; v1 stops on SIGTERM and v2 starts
//! in its place with the same data. The database password reaches Tomcat only through the
//! environment: never on a command line, never in the output.
mod common;

use common::{http, repo, s, wait_until};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "s3cret 'quoted\" $HOME pw";

fn script(name: &str) -> PathBuf {
    repo().join("examples/itrust").join(name)
}

fn need(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: apt-get install {package} (.ci/run installs it)"
    );
}

fn build(out: &Path, version: Option<&str>) -> (Vec<u8>, Duration) {
    let t = Instant::now();
    let mut c = Command::new(script("build.sh"));
    c.arg(out);
    if let Some(v) = version {
        c.arg(v);
    }
    let o = c.output().expect("run build.sh");
    assert!(
        o.status.success(),
        "build.sh failed:\n{}{}",
        s(&o.stdout),
        s(&o.stderr)
    );
    let war = std::fs::read(out.join("itrust.war")).expect("build.sh wrote itrust.war");
    (war, t.elapsed())
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn entries(war: &Path) -> Vec<String> {
    let o = Command::new("jar")
        .args(["--list", "--file"])
        .arg(war)
        .output()
        .expect("jar --list");
    assert!(o.status.success(), "jar --list: {}", s(&o.stderr));
    s(&o.stdout).lines().map(str::to_string).collect()
}

/// A process killed (and reaped) on drop, also when the test panics.
struct Proc {
    child: Child,
    what: &'static str,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    /// SIGTERM, then wait at most `within` for the exit; the exit status's code, None on a signal.
    fn terminate(&mut self, within: Duration) -> Option<i32> {
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -TERM {}", self.what);
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                t.elapsed() < within,
                "{} did not exit within {within:?} of SIGTERM",
                self.what
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // tomcat-instance.sh's JVM first: killing the script alone would orphan it.
        let pid = self.pid();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
        for c in children.unwrap_or_default().split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", c]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Mariadb {
    dir: PathBuf,
    port: u16,
}

impl Mariadb {
    fn socket(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }
    fn start(&self) -> Proc {
        let mut c = Command::new("mariadbd");
        c.arg("--no-defaults")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.join("mysqld.pid").display()
            ))
            .arg(format!("--port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("server.log")).unwrap());
        if uid() == 0 {
            c.arg("--user=root");
        }
        let p = Proc {
            child: c.spawn().expect("start mariadbd"),
            what: "mariadbd",
        };
        let sock = self.socket();
        assert!(
            wait_until(Duration::from_secs(60), || sql(&sock, "SELECT 1").is_ok()),
            "mariadbd did not answer on {} within 60 s:\n{}",
            sock.display(),
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
        p
    }
}

/// The JVM: the script's only child (it waits for it, to report a stop as success).
fn jvm(script: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{script}/task/{script}/children"))
        .unwrap_or_default();
    let pids: Vec<u32> = children
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(
        pids.len(),
        1,
        "tomcat-instance.sh has one child, the JVM: {pids:?}"
    );
    pids[0]
}

fn uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// Runs SQL as the server's socket-authenticated administrator; the SQL goes on stdin.
fn sql(socket: &Path, text: &str) -> Result<String, String> {
    let mut c = Command::new("mariadb")
        .arg("--no-defaults")
        .arg(format!("--socket={}", socket.display()))
        .args(["--batch", "--skip-column-names"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    c.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    let o = c.wait_with_output().map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(s(&o.stdout))
    } else {
        Err(s(&o.stderr))
    }
}

fn sql_literal(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Starts tomcat-instance.sh in `release` (as a pipeline service does: `PORT` set, the release
/// as working directory). `base`: TOMCAT_INSTANCE_DIR, or None for the script's default.
/// `nobody`: as the unprivileged user 65534 (as root only), like the service's own user.
fn start_tomcat(
    release: &Path,
    port: u16,
    db_port: u16,
    base: Option<&Path>,
    nobody: bool,
    log: &Path,
) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    let mut c = if nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(script("tomcat-instance.sh"));
        c
    } else {
        Command::new(script("tomcat-instance.sh"))
    };
    if let Some(base) = base {
        c.env("TOMCAT_INSTANCE_DIR", base);
    }
    let child = c
        .current_dir(release)
        .env("PORT", port.to_string())
        .env("TOMCAT_ADDRESS", "127.0.0.1")
        .env("PIPELINE_INSTANCE", format!("itrust-test-{port}"))
        .env(
            "SPRING_DATASOURCE_URL",
            format!("jdbc:mariadb://127.0.0.1:{db_port}/itrust"),
        )
        .env("SPRING_DATASOURCE_USERNAME", "itrust")
        .env("SPRING_DATASOURCE_PASSWORD", PASSWORD)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start tomcat-instance.sh");
    Proc {
        child,
        what: "tomcat",
    }
}

fn wait_healthy(port: u16, log: &Path, within: Duration) -> Duration {
    let t = Instant::now();
    let ok = wait_until(within, || {
        matches!(
            http("GET", &format!("http://127.0.0.1:{port}/health"), ""),
            Some((200, _))
        )
    });
    assert!(
        ok,
        "tomcat on port {port}: /health did not answer 200 within {within:?}; its output:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    t.elapsed()
}

fn get(port: u16, path: &str) -> (u16, String) {
    http("GET", &format!("http://127.0.0.1:{port}{path}"), "")
        .unwrap_or_else(|| panic!("GET {path} on port {port}: no answer"))
}

fn signal(sig: &str, pid: u32) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

/// GET with a read timeout of `within` (common::http gives up after 5 s).
fn slow_get(port: u16, path: &str, within: Duration) -> (u16, String) {
    use std::io::Read;
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(within)).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp)
        .unwrap_or_else(|e| panic!("GET {path}: no answer within {within:?}: {e}"));
    let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn itrust_war_builds_reproducibly_and_serves_patients_from_mariadb() {
    for (path, package) in [
        (
            "/usr/share/java/tomcat10-servlet-api.jar",
            "libtomcat10-java",
        ),
        ("/usr/share/java/mariadb-java-client.jar", "libmariadb-java"),
        ("/usr/share/tomcat10/bin/catalina.sh", "tomcat10-common"),
        ("/usr/sbin/mariadbd", "mariadb-server-core"),
        ("/usr/bin/mariadb-install-db", "mariadb-server-core"),
        ("/usr/bin/mariadb", "mariadb-client-core"),
    ] {
        need(path, package);
    }
    let tmp = tempfile::Builder::new()
        .prefix("example-itrust-")
        .tempdir()
        .unwrap();
    let root = tmp.path();

    // The build: twice the same bytes; v2 differs only by its stamp.
    let (a, t1) = build(&root.join("a"), None);
    let (b, t2) = build(&root.join("b"), None);
    assert_eq!(
        sha256(&a),
        sha256(&b),
        "two builds of the same sources differ"
    );
    let (v2, _) = build(&root.join("v2"), Some("2"));
    assert_ne!(sha256(&a), sha256(&v2), "v2's WAR is the same as v1's");
    eprintln!(
        "build: {:.1} s and {:.1} s, {} KB, sha256 {}",
        t1.as_secs_f64(),
        t2.as_secs_f64(),
        a.len() / 1024,
        sha256(&a)
    );
    let list = entries(&root.join("a/itrust.war"));
    for e in [
        "WEB-INF/classes/itrust/Health.class",
        "WEB-INF/classes/itrust/Patients.class",
        "WEB-INF/classes/itrust/Index.class",
        "WEB-INF/classes/itrust/version.txt",
        "WEB-INF/lib/mariadb-java-client.jar",
        "WEB-INF/web.xml",
        "META-INF/context.xml",
        // Tomcat finds no classes in a WAR without its directory entries.
        "WEB-INF/classes/",
    ] {
        assert!(list.iter().any(|l| l == e), "the WAR lacks {e}: {list:?}");
    }
    let bad = Command::new(script("build.sh"))
        .args([root.join("bad").to_str().unwrap(), "1; rm -rf /"])
        .output()
        .unwrap();
    assert!(!bad.status.success() && s(&bad.stderr).contains("is not a version"));

    // A MariaDB server of our own, on a free loopback port.
    let db = Mariadb {
        dir: root.join("db"),
        port: common::load::free_port(),
    };
    std::fs::create_dir_all(db.dir.join("data")).unwrap();
    std::fs::set_permissions(&db.dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let user = s(&Command::new("id").arg("-un").output().unwrap().stdout)
        .trim()
        .to_string();
    let t = Instant::now();
    let mut install = Command::new("mariadb-install-db");
    install
        .arg("--no-defaults")
        .arg(format!("--datadir={}", db.dir.join("data").display()))
        .args(["--auth-root-authentication-method=socket", "--skip-test-db"])
        .arg(format!("--auth-root-socket-user={user}"));
    if uid() == 0 {
        install.arg("--user=root");
    }
    let o = install.output().expect("run mariadb-install-db");
    assert!(
        o.status.success(),
        "mariadb-install-db: {}{}",
        s(&o.stdout),
        s(&o.stderr)
    );
    let mut server = db.start();
    eprintln!(
        "mariadb: installed and answering in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    sql(
        &db.socket(),
        &format!(
            "CREATE DATABASE itrust; CREATE USER 'itrust'@'127.0.0.1' IDENTIFIED BY {}; \
             GRANT ALL ON itrust.* TO 'itrust'@'127.0.0.1';",
            sql_literal(PASSWORD)
        ),
    )
    .expect("create the database and its user");

    // v1: the release directory holds the WAR, as a pipeline service's release would.
    let port = common::load::free_port();
    let base = root.join("instance");
    let log1 = root.join("tomcat-v1.log");
    let mut tomcat = start_tomcat(&root.join("a"), port, db.port, Some(&base), false, &log1);
    let up = wait_healthy(port, &log1, Duration::from_secs(120));
    eprintln!(
        "tomcat v1: /health 200 {:.1} s after the start",
        up.as_secs_f64()
    );

    let (st, body) = get(port, "/health");
    let h = json(&body);
    assert_eq!(
        (st, h["status"].as_str(), h["version"].as_str()),
        (200, Some("ok"), Some("1"))
    );
    assert_eq!(h["patients"], 0, "a fresh database has no patients: {body}");
    assert_eq!(get(port, "/version"), (200, "1\n".to_string()));
    // The table was created by the application.
    assert!(sql(&db.socket(), "SHOW TABLES IN itrust")
        .unwrap()
        .contains("patients"));

    let (st, body) = http(
        "POST",
        &format!("http://127.0.0.1:{port}/api/patients"),
        r#"{"name":"Alice <O'Hara> \"A\""}"#,
    )
    .expect("POST /api/patients");
    assert_eq!(st, 201, "POST /api/patients: {body}");
    assert_eq!(json(&body)["name"], "Alice <O'Hara> \"A\"");
    let (st, body) = http(
        "POST",
        &format!("http://127.0.0.1:{port}/api/patients"),
        r#"{"name":"   "}"#,
    )
    .unwrap();
    assert_eq!(st, 400, "a blank name is refused: {body}");
    let (st, body) = http(
        "POST",
        &format!("http://127.0.0.1:{port}/api/patients"),
        r#"{"name":"Bob"}"#,
    )
    .unwrap();
    assert_eq!(st, 201, "{body}");
    let (st, body) = get(port, "/api/patients");
    assert_eq!(st, 200);
    let names: Vec<String> = json(&body)
        .as_array()
        .expect("an array")
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["Alice <O'Hara> \"A\"", "Bob"]);
    assert_eq!(
        sql(&db.socket(), "SELECT COUNT(*) FROM itrust.patients")
            .unwrap()
            .trim(),
        "2",
        "the patients are in the database"
    );
    let (st, page) = get(port, "/");
    assert_eq!(st, 200);
    assert!(
        page.contains("Alice &lt;O&#39;Hara&gt; &quot;A&quot;") && page.contains("<form"),
        "the page lists the patients, escaped, and has the form:\n{page}"
    );
    assert_eq!(get(port, "/no-such-page").0, 404);

    // The password is in no command line of the JVM, nor in Tomcat's output.
    let java = jvm(tomcat.pid());
    let cmdline = std::fs::read(format!("/proc/{java}/cmdline")).unwrap();
    let cmdline = s(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains("org.apache.catalina.startup.Bootstrap"),
        "{cmdline}"
    );
    assert!(
        cmdline.contains("-Xmx256m"),
        "the heap is capped: {cmdline}"
    );
    assert!(
        !cmdline.contains("s3cret"),
        "the password is on the command line"
    );

    // The database hangs (stopped: the kernel still accepts connections, nothing answers):
    // /health answers 500 after the driver's socket timeout instead of hanging.
    signal("STOP", server.pid());
    let t = Instant::now();
    let hung = slow_get(port, "/health", Duration::from_secs(30));
    let took = t.elapsed();
    signal("CONT", server.pid());
    assert_eq!(hung.0, 500, "/health with a hung database: {}", hung.1);
    assert!(
        took < Duration::from_secs(10),
        "/health took {took:?} with a hung database"
    );
    eprintln!(
        "/health with a hung database: 500 in {:.1} s",
        took.as_secs_f64()
    );
    wait_healthy(port, &log1, Duration::from_secs(10));

    // The database goes away: /health says so (500), and recovers when it is back.
    let t = Instant::now();
    assert_eq!(server.terminate(Duration::from_secs(30)), Some(0));
    let (st, body) = get(port, "/health");
    assert_eq!(st, 500, "/health without the database: {body}");
    assert_eq!(json(&body)["status"], "error");
    eprintln!(
        "/health without the database: 500 in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(get(port, "/api/patients").0, 503);
    let _server = db.start();
    wait_healthy(port, &log1, Duration::from_secs(10));

    // v1 stops on SIGTERM (catalina.sh exec'd the JVM); v2 takes its place with the same data.
    let t = Instant::now();
    let code = tomcat.terminate(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "a stop on SIGTERM is a success (systemd: not failed)"
    );
    eprintln!(
        "tomcat v1: stopped {:.1} s after SIGTERM (exit {code:?})",
        t.elapsed().as_secs_f64()
    );
    let out1 = std::fs::read_to_string(&log1).unwrap();
    assert!(out1.contains("itrust example version 1 started"), "{out1}");
    // v2 runs as a pipeline service's instance does: unprivileged (as root: user 65534), the
    // release directory not writable, CATALINA_BASE in the script's default place.
    let nobody = uid() == 0;
    let runner = if nobody { 65534 } else { uid() };
    for d in [root, &root.join("v2")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let default_base = PathBuf::from(format!(
        "/var/tmp/tomcat-instance-{runner}/itrust-test-{port}"
    ));
    let log2 = root.join("tomcat-v2.log");
    let mut tomcat2 = start_tomcat(&root.join("v2"), port, db.port, None, nobody, &log2);
    let up = wait_healthy(port, &log2, Duration::from_secs(120));
    eprintln!(
        "tomcat v2: /health 200 {:.1} s after the start",
        up.as_secs_f64()
    );
    let meta = std::fs::metadata(&default_base).expect("CATALINA_BASE in its default place");
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (runner, 0o700),
        "{}",
        default_base.display()
    );
    assert!(default_base.join("webapps/ROOT.war").is_file());
    let java = std::fs::metadata(format!("/proc/{}", jvm(tomcat2.pid()))).unwrap();
    assert_eq!(java.uid(), runner, "the JVM runs as the instance's user");
    assert_eq!(get(port, "/version"), (200, "2\n".to_string()));
    assert_eq!(json(&get(port, "/health").1)["patients"], 2);
    tomcat2.terminate(Duration::from_secs(30));
    std::fs::remove_dir_all(&default_base).unwrap();
    let _ = std::fs::remove_dir(default_base.parent().unwrap()); // when no other instance is there
    let out2 = std::fs::read_to_string(&log2).unwrap();
    for out in [&out1, &out2] {
        assert!(
            !out.contains("s3cret"),
            "the password is in Tomcat's output:\n{out}"
        );
    }

    // Bad input: no PORT, no WAR.
    let o = Command::new(script("tomcat-instance.sh"))
        .current_dir(root)
        .env_remove("PORT")
        .arg(root.join("a/itrust.war"))
        .output()
        .unwrap();
    assert!(
        !o.status.success() && s(&o.stderr).contains("PORT must be set"),
        "{}",
        s(&o.stderr)
    );
    let o = Command::new(script("tomcat-instance.sh"))
        .current_dir(root)
        .env("PORT", "8080")
        .output()
        .unwrap();
    assert!(
        !o.status.success() && s(&o.stderr).contains("holds 0 WAR files"),
        "{}",
        s(&o.stderr)
    );
}
