//! The managed Redis with Sentinel, for real: the init script and preStop hook the operator
//! puts into the StatefulSet, run with `sh` against three real redis-server + Sentinel
//! pairs on loopback (127.0.0.2-4 stand for the three Pods' DNS names), and the operator's
//! own status code asking those Sentinels.
//!
//! Checked: first start (ordinal 0 primary, the others its replicas); a forced deletion of
//! the primary restarted at once (the script waits for the Sentinels to promote a replica
//! and comes back as a replica with the acknowledged write); after it, and after a replica
//! chained behind another that every Sentinel forgot, all N-1 replicas are back in sync
//! and listed by the Sentinels within 30 s (the sentinel container's replica watch); the
//! preStop hook hands the primary over in about a second; the status summary follows.
//!
//! Needs `redis-server` and `redis-cli` (tests/run.sh installs them); skipped otherwise.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use odoo_session_operator::builders::redis_ha::{INIT_SCRIPT, PRESTOP_SCRIPT, SENTINEL_SCRIPT};
use odoo_session_operator::reconcile::sentinel;

const PASSWORD: &str = "pw-with-\"quote\"-and-\\";
const MASTER: &str = "odoo-sessions";
const PODS: usize = 3;

fn host(i: usize) -> String {
    format!("127.0.0.{}", i + 2)
}

fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A port free on every loopback address the "Pods" use.
fn free_port(avoid: u16) -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 0))
            .expect("bind 127.0.0.2");
        let port = l.local_addr().expect("addr").port();
        drop(l);
        if port != avoid
            && (0..PODS).all(|i| TcpListener::bind(format!("{}:{port}", host(i))).is_ok())
        {
            return port;
        }
    }
    panic!("no free port on 127.0.0.2-4")
}

struct Set {
    /// Data directories and logs (a Pod's data volume).
    dir: PathBuf,
    /// redis.conf and sentinel.conf, in memory where possible, as the Pod's `conf` volume
    /// (a `Memory` emptyDir): Sentinel fsyncs its file at every change it learns, and one
    /// fsync on a busy disk stalled a Sentinel over 2 s, so it entered TILT mode for 30 s
    /// and voted no failover (seen here under a CI build: no promotion within 30 s).
    conf_dir: PathBuf,
    port: u16,
    sport: u16,
    procs: Vec<Option<(Child, Child)>>,
}

impl Drop for Set {
    fn drop(&mut self) {
        for i in 0..PODS {
            self.kill(i);
        }
        if std::env::var_os("REDIS_HA_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
            let _ = std::fs::remove_dir_all(&self.conf_dir);
        }
    }
}

impl Set {
    fn new() -> Set {
        let name = format!("redis-ha-it-{}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        let shm = Path::new("/dev/shm");
        let conf_dir = if shm.is_dir() {
            shm.join(&name)
        } else {
            dir.join("conf")
        };
        let _ = std::fs::remove_dir_all(&conf_dir);
        let port = free_port(0);
        let sport = free_port(port);
        Set {
            dir,
            conf_dir,
            port,
            sport,
            procs: (0..PODS).map(|_| None).collect(),
        }
    }

    fn conf(&self, i: usize) -> PathBuf {
        self.conf_dir.join(format!("conf-{i}"))
    }

    fn script(&self, i: usize, script: &str) -> Command {
        let conf = self.conf(i);
        let data = self.dir.join(format!("data-{i}"));
        std::fs::create_dir_all(&conf).expect("conf dir");
        std::fs::create_dir_all(&data).expect("data dir");
        let hosts: Vec<String> = (0..PODS).map(host).collect();
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(script)
            .env("REDISCLI_AUTH", PASSWORD)
            .env("POD_NAME", format!("it-redis-{i}"))
            .env("REDIS_HA_HOSTS", hosts.join(" "))
            .env("REDIS_HA_MASTER", MASTER)
            .env("REDIS_HA_QUORUM", "2")
            .env("REDIS_PORT", self.port.to_string())
            .env("SENTINEL_PORT", self.sport.to_string())
            .env("REDIS_HA_CONF", &conf)
            .env("REDIS_HA_DATA", &data)
            .env("REDIS_HA_DOWN_AFTER_MS", "1000")
            .env("REDIS_HA_WAIT_SECONDS", "30")
            .env("REDIS_HA_PRESTOP_SECONDS", "15")
            .env(
                "REDIS_HA_WATCH_SECONDS",
                std::env::var("REDIS_HA_WATCH_SECONDS").unwrap_or_else(|_| "2".into()),
            )
            .env("REDIS_HA_BIND", host(i));
        c
    }

    fn init(&self, i: usize) -> String {
        let out = self.script(i, INIT_SCRIPT).output().expect("sh runs");
        text(&out, "init script", true)
    }

    fn start(&mut self, i: usize) {
        let conf = self.conf(i);
        let log = |name: &str| {
            std::fs::File::create(self.dir.join(format!("{name}-{i}.log"))).expect("log")
        };
        let redis = Command::new("redis-server")
            .arg(conf.join("redis.conf"))
            .stdout(log("redis"))
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        // The container's command: the replica watch in the background, then Sentinel; in
        // its own process group, killed as a whole like a container.
        let sentinel = self
            .script(i, SENTINEL_SCRIPT)
            .process_group(0)
            .stdout(log("sentinel"))
            .stderr(Stdio::null())
            .spawn()
            .expect("sentinel");
        self.procs[i] = Some((redis, sentinel));
        wait_for(&format!("redis {i} to answer"), 10, || {
            self.cli(i, self.port, &["PING"]).trim() == "PONG"
        });
        // As the Pod's readiness (a TCP probe on the Sentinel port): the sentinel container
        // starts Sentinel once its Redis is a primary or a replica in sync.
        wait_for(&format!("sentinel {i} to answer"), 35, || {
            self.cli(i, self.sport, &["PING"]).trim() == "PONG"
        });
    }

    /// SIGKILL of both processes: a forced deletion of the Pod.
    fn kill(&mut self, i: usize) {
        if let Some((mut r, mut s)) = self.procs[i].take() {
            let _ = r.kill();
            let _ = Command::new("kill")
                .args(["-9", "--", &format!("-{}", s.id())])
                .stderr(Stdio::null())
                .status();
            let _ = s.kill();
            let _ = r.wait();
            let _ = s.wait();
        }
    }

    fn cli(&self, i: usize, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", &host(i), "-p", &port.to_string(), "--raw"])
            .args(args)
            .env("REDISCLI_AUTH", PASSWORD)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn role(&self, i: usize) -> String {
        self.cli(i, self.port, &["ROLE"])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }

    /// INFO replication of every node and SENTINEL REPLICAS of every Sentinel, one line
    /// each: what a failing wait prints.
    fn dump(&self) -> String {
        let mut out = String::new();
        for i in 0..PODS {
            if self.procs[i].is_none() {
                out.push_str(&format!("pod {i}: down\n"));
                continue;
            }
            let info: Vec<String> = self
                .cli(i, self.port, &["INFO", "replication"])
                .lines()
                .filter(|l| {
                    l.starts_with("role")
                        || l.starts_with("master_host")
                        || l.starts_with("master_link_status")
                        || l.starts_with("connected_slaves")
                        || l.starts_with("slave")
                })
                .map(|l| l.trim().to_string())
                .collect();
            out.push_str(&format!("pod {i} redis: {}\n", info.join(" ")));
            let reps = self.cli(i, self.sport, &["SENTINEL", "replicas", MASTER]);
            out.push_str(&format!(
                "pod {i} sentinel replicas: {}\n",
                reps.replace('\n', " ")
            ));
        }
        out
    }

    fn conf_text(&self, i: usize, file: &str) -> String {
        std::fs::read_to_string(self.conf(i).join(file)).expect("rendered config")
    }

    async fn status(&self) -> odoo_session_operator::crd::RedisReplicationStatus {
        self.replication().await.status
    }

    async fn replication(&self) -> sentinel::Replication {
        let targets: Vec<(String, Option<String>)> = (0..PODS)
            .map(|i| {
                (
                    format!("it-redis-{i}"),
                    self.procs[i].as_ref().map(|_| host(i)),
                )
            })
            .collect();
        let answers = sentinel::ask_all(&targets, self.sport, PASSWORD, MASTER).await;
        sentinel::summarize(PODS as i32, &answers)
    }
}

fn text(out: &Output, what: &str, must_succeed: bool) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if must_succeed {
        assert!(out.status.success(), "{what} failed: {stdout}{stderr}");
    }
    format!("{stdout}{stderr}")
}

fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{name} {pid}");
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits, at most 30 s, until the primary has N-1 replicas online and the Sentinels list
/// them all in sync; panics with every node's INFO and every Sentinel's list otherwise.
async fn all_replicas_back(
    set: &Set,
    after: &str,
) -> odoo_session_operator::crd::RedisReplicationStatus {
    let since = Instant::now();
    loop {
        let s = set.status().await;
        let online = primary_index(&s).map_or(0, |p| {
            set.cli(p, set.port, &["INFO", "replication"])
                .matches("state=online")
                .count()
        });
        let all = PODS as i32 - 1;
        if s.healthy && s.replicas_seen == all && s.replicas_in_sync == all && online == PODS - 1 {
            eprintln!("all replicas back after {after} in {:?}", since.elapsed());
            return s;
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "after {after}, replicas not all back in 30 s: {s:?}\n{}",
            set.dump()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn primary_index(s: &odoo_session_operator::crd::RedisReplicationStatus) -> Option<usize> {
    let p = s.primary.as_deref()?;
    (0..PODS).find(|i| host(*i) == p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_script_roles_failover_and_prestop_on_real_redis_and_sentinel() {
    if !have("redis-server") || !have("redis-cli") {
        eprintln!("SKIPPED: redis-server/redis-cli not installed (tests/run.sh installs them)");
        return;
    }
    if TcpListener::bind("127.0.0.3:0").is_err() {
        eprintln!("SKIPPED: 127.0.0.3 is not usable on this machine");
        return;
    }
    let mut set = Set::new();

    // 1. First start of the whole set: nobody answers, ordinal 0 is the primary.
    let out = set.init(0);
    assert!(out.contains("first start"), "{out}");
    let redis_conf = set.conf_text(0, "redis.conf");
    assert!(!redis_conf.contains("replicaof"), "{redis_conf}");
    assert!(redis_conf.contains("appendonly yes"), "{redis_conf}");
    assert!(
        redis_conf.contains(r#"requirepass "pw-with-\"quote\"-and-\\""#),
        "the password is escaped for the config parser: {redis_conf}"
    );
    assert!(redis_conf.contains("replica-announce-ip 127.0.0.2"));
    let sentinel_conf = set.conf_text(0, "sentinel.conf");
    for line in [
        "sentinel resolve-hostnames yes",
        "sentinel announce-hostnames yes",
        "sentinel announce-ip 127.0.0.2",
        "sentinel monitor odoo-sessions 127.0.0.2",
        "sentinel down-after-milliseconds odoo-sessions 1000",
    ] {
        assert!(sentinel_conf.contains(line), "{line:?} in {sentinel_conf}");
    }
    set.start(0);
    for i in 1..PODS {
        let out = set.init(i);
        assert!(out.contains("name 127.0.0.2 as primary"), "{out}");
        assert!(set
            .conf_text(i, "redis.conf")
            .contains(&format!("replicaof 127.0.0.2 {}", set.port)));
        set.start(i);
    }
    assert_eq!(set.role(0), "master");
    // The operator's status code, against the real Sentinels.
    let mut healthy = None;
    for _ in 0..100 {
        let s = set.status().await;
        if s.healthy {
            healthy = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let s = healthy.expect("replication healthy within 30 s");
    assert_eq!(s.primary.as_deref(), Some("127.0.0.2"));
    assert_eq!(
        (s.replicas_seen, s.replicas_in_sync, s.sentinels_agreeing),
        (2, 2, 3)
    );

    // 2. An acknowledged logout (WAIT 1, what the sidecar does with MIN_REPLICAS=1).
    assert_eq!(
        set.cli(0, set.port, &["SET", "logout", "done"]).trim(),
        "OK"
    );
    let acked: i64 = set
        .cli(0, set.port, &["WAIT", "1", "2000"])
        .trim()
        .parse()
        .expect("WAIT answer");
    assert!(acked >= 1);

    // 3. Forced deletion of the primary, restarted at once: the script must not start it
    //    as primary; it waits for the Sentinels to promote a replica and follows it.
    set.kill(0);
    let started = Instant::now();
    let out = set.init(0);
    let took = started.elapsed();
    // Usually the script asks before the Sentinels have promoted anyone and waits; on a
    // loaded machine the promotion (2-3 s) can come first, and it follows at once. Either
    // way it must come back as a replica of the promoted Pod, never as a primary.
    assert!(out.contains("as primary: replicating it"), "{out}");
    assert!(!out.contains("starting as primary"), "{out}");
    // About 3 s on an idle machine; a split Sentinel vote is retried after 8 s.
    assert!(took < Duration::from_secs(28), "failover took {took:?}");
    eprintln!("failover seen by the restarted former primary after {took:?}");
    let conf = set.conf_text(0, "redis.conf");
    let new_primary = (1..PODS)
        .find(|i| conf.contains(&format!("replicaof {} ", host(*i))))
        .unwrap_or_else(|| panic!("pod 0 must replicate pod 1 or 2: {conf}"));
    set.start(0);
    wait_for("pod 0 to be a replica in sync", 20, || {
        set.role(0) == "slave" && set.cli(0, set.port, &["GET", "logout"]).trim() == "done"
    });
    assert_eq!(set.role(new_primary), "master");
    // Every replica back in sync and known to the Sentinels: the sidecars' WAIT for N/2
    // replicas must survive one more failure. The Sentinel that led the failover may not
    // have known the third Pod yet (replicas are learnt from the primary's INFO every 10
    // s): it then still follows the old primary, chained behind it once it is back, where
    // no Sentinel sees it; the replica watch of the sentinel container repairs that.
    let s = all_replicas_back(&set, "the forced failover").await;
    assert_eq!(primary_index(&s), Some(new_primary), "{s:?}");
    assert_eq!(s.sentinels_agreeing, 3, "{s:?}");

    // 3b. The same orphan, on purpose: the third Pod chained behind Pod 0 (a replica) and
    //     every Sentinel forgetting it (SENTINEL RESET: they relearn from the primary's
    //     INFO, which does not list it). Without the watch this stays so for good.
    let third = (1..PODS).find(|i| *i != new_primary).expect("third pod");
    assert_eq!(
        set.cli(
            third,
            set.port,
            &["REPLICAOF", &host(0), &set.port.to_string()]
        )
        .trim(),
        "OK"
    );
    for i in 0..PODS {
        set.cli(i, set.sport, &["SENTINEL", "RESET", MASTER]);
    }
    let s = all_replicas_back(&set, "a replica chained behind another").await;
    assert_eq!(primary_index(&s), Some(new_primary), "{s:?}");
    assert!(
        set.cli(third, set.port, &["INFO", "replication"])
            .contains(&format!("master_host:{}", host(new_primary))),
        "{}",
        set.dump()
    );

    // 4. Graceful deletion of the primary: preStop hands over in about a second.
    let started = Instant::now();
    let out = set
        .script(new_primary, PRESTOP_SCRIPT)
        .output()
        .expect("preStop runs");
    let out = text(&out, "preStop", true);
    assert!(out.contains("failover asked"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "preStop took {:?}",
        started.elapsed()
    );
    // The Sentinel asked names the new primary at once; the others follow with its next
    // hello message (every 2 s).
    let mut s = set.status().await;
    let since = Instant::now();
    while (s.sentinels_agreeing < 3 || primary_index(&s) == Some(new_primary))
        && since.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s = set.status().await;
    }
    let after = primary_index(&s).expect("a primary");
    assert_ne!(after, new_primary, "{s:?}");
    assert_eq!(s.sentinels_agreeing, 3, "{s:?}");
    all_replicas_back(&set, "the preStop handover").await;

    // 5. preStop on a replica does nothing.
    let replica = (0..PODS).find(|i| *i != after).expect("a replica");
    let started = Instant::now();
    let out = set
        .script(replica, PRESTOP_SCRIPT)
        .output()
        .expect("preStop");
    assert!(!text(&out, "preStop", true).contains("failover asked"));
    assert!(started.elapsed() < Duration::from_secs(5));

    // 5b. A primary that stops answering (SIGSTOP: its replicas keep their link up until
    //     repl-timeout) is flagged down by the Sentinels first: the status says
    //     PrimaryDown (the store's Ready reason) before any failover ends. Last but the
    //     teardown, so nothing waits for the set to heal.
    let frozen = set.procs[after].as_ref().expect("primary runs").0.id();
    signal(frozen, "STOP");
    let since = Instant::now();
    let mut seen = Vec::new();
    while since.elapsed() < Duration::from_secs(15) {
        let r = set.replication().await;
        seen.push(r.problem);
        if r.problem == Some(sentinel::Problem::PrimaryDown) {
            assert!(!r.status.healthy);
            assert!(r.status.message.contains("see it down"), "{r:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    signal(frozen, "CONT");
    assert!(
        seen.contains(&Some(sentinel::Problem::PrimaryDown)),
        "never PrimaryDown while the primary was frozen: {seen:?}\n{}",
        set.dump()
    );
    // (The failover that follows is step 3's; step 6 stops the whole set anyway.)

    // 6. Sentinels that cannot be reached are a status message.
    set.kill(0);
    set.kill(1);
    set.kill(2);
    let s = set.status().await;
    assert!(!s.healthy);
    assert!(s.primary.is_none());
    assert!(s.message.contains("no Sentinel answered"), "{s:?}");
    let _ = Path::new(&set.dir);
}
