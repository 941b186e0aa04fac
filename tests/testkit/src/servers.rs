//! Redis and PostgreSQL launched from the Debian binaries.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn wait_for_port(port: u16, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Sends `sig` to `pid` and to every process descended from it (PostgreSQL's backends are
/// children of the postmaster), found through `/proc`.
fn signal_tree(pid: u32, sig: libc::c_int) {
    let mut todo = vec![pid];
    let mut all = Vec::new();
    while let Some(p) = todo.pop() {
        all.push(p);
        let Ok(dir) = std::fs::read_dir("/proc") else {
            break;
        };
        for entry in dir.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // "pid (comm) state ppid ...": comm may hold spaces, so read after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(p) && !all.contains(&child) {
                todo.push(child);
            }
        }
    }
    for p in all {
        unsafe {
            libc::kill(p as libc::pid_t, sig);
        }
    }
}

/// Spawns from a thread that lives as long as the process, so the parent-death signal
/// fires when the test process ends and not when the spawning test's thread ends.
fn spawn_owned(mut cmd: Command, run_as: Option<(u32, u32)>) -> Child {
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = run_as {
                if libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Set after the credential change, which would clear it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.spawn());
        loop {
            std::thread::park();
        }
    });
    rx.recv()
        .expect("spawner thread died")
        .unwrap_or_else(|e| panic!("cannot start server: {e}"))
}

fn find_binary(name: &str, extra_dirs: &[PathBuf]) -> PathBuf {
    for d in extra_dirs {
        let p = d.join(name);
        if p.exists() {
            return p;
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        for d in path.split(':') {
            let p = Path::new(d).join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!("{name} not found: install it (the README's test command does: apt-get install redis-server postgresql)");
}

/// The directory of a Sentinel's configuration: in memory (/dev/shm) where there is one,
/// as the operator's Pods keep it (a `Memory` emptyDir). Sentinel rewrites and fsyncs its
/// file on every change it learns; on a busy disk one fsync stalled a Sentinel over 2 s,
/// which puts it into TILT mode for 30 s, where it votes no failover (seen in
/// operator/tests/redis_ha_processes.rs under a CI build: no promotion within 30 s).
pub fn sentinel_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

/// redis-server arguments for TLS only on `port`, with the test CA's server certificate
/// and no client certificates.
fn tls_args(tls: &crate::tls::TestCa, port: u16) -> Vec<String> {
    let p = |f: &std::path::PathBuf| f.to_string_lossy().into_owned();
    vec![
        "--tls-port".into(),
        port.to_string(),
        "--tls-cert-file".into(),
        p(&tls.server_cert),
        "--tls-key-file".into(),
        p(&tls.server_key),
        "--tls-ca-cert-file".into(),
        p(&tls.ca_cert),
        "--tls-auth-clients".into(),
        "no".into(),
    ]
}

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    durable: bool,
    /// Arguments replacing the plain-TCP port (TLS) or the mode (Sentinel).
    extra: Vec<String>,
    /// `requirepass`, for [`RedisServer::cli`].
    password: Option<String>,
}

impl RedisServer {
    /// Starts redis-server with append-only persistence (fsync every write) so a restart
    /// keeps every acknowledged write.
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// Without persistence, as a cache-only Redis: for benchmarks of the request path.
    pub fn start_plain() -> Self {
        Self::start_with(false)
    }

    /// As [`RedisServer::start_plain`], also listening on a Unix socket
    /// ([`RedisServer::socket_url`]).
    pub fn start_plain_with_socket() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("redis.sock");
        let mut s = RedisServer {
            port: free_port(),
            dir,
            child: None,
            durable: false,
            extra: vec![
                "--unixsocket".into(),
                socket.to_string_lossy().into_owned(),
                "--unixsocketperm".into(),
                "700".into(),
            ],
            password: None,
        };
        s.launch();
        s
    }

    /// `redis+unix://` URL of the socket of [`RedisServer::start_plain_with_socket`].
    pub fn socket_url(&self) -> String {
        format!(
            "redis+unix://{}",
            self.dir.path().join("redis.sock").display()
        )
    }

    fn start_with(durable: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = RedisServer {
            port: free_port(),
            dir,
            child: None,
            durable,
            extra: Vec::new(),
            password: None,
        };
        s.launch();
        s
    }

    /// A Redis answering only TLS on its port, with a certificate for 127.0.0.1 and
    /// localhost signed by `tls`'s CA.
    pub fn start_tls(tls: &crate::tls::TestCa) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut s = RedisServer {
            port,
            dir,
            child: None,
            durable: false,
            extra: tls_args(tls, port),
            password: None,
        };
        s.launch();
        s
    }

    /// A Sentinel watching the master at `master_port` under the name `mymaster`.
    pub fn start_sentinel(master_port: u16) -> Self {
        let dir = sentinel_dir();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n"
            ),
        )
        .expect("sentinel.conf");
        let mut s = RedisServer {
            port,
            dir,
            child: None,
            durable: false,
            extra: vec![conf.to_string_lossy().into_owned(), "--sentinel".into()],
            password: None,
        };
        s.launch();
        s
    }

    /// A durable Redis with `requirepass`/`masterauth` set to `password`, announcing itself
    /// to its primary as `localhost` (a hostname, as in Kubernetes), and replicating from
    /// `replica_of` when given.
    pub fn start_node(password: &str, replica_of: Option<u16>) -> Self {
        Self::start_node_with(password, replica_of, &[])
    }

    /// As [`RedisServer::start_node`], with more `redis-server` arguments.
    pub fn start_node_with(password: &str, replica_of: Option<u16>, more: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut extra: Vec<String> = [
            "--requirepass",
            password,
            "--masterauth",
            password,
            "--replica-announce-ip",
            "localhost",
            // A replica (re)joining syncs at once, not after the default 5 s.
            "--repl-diskless-sync-delay",
            "0",
        ]
        .map(String::from)
        .to_vec();
        if let Some(p) = replica_of {
            extra.extend(["--replicaof".into(), "localhost".into(), p.to_string()]);
        }
        extra.extend(more.iter().map(|a| a.to_string()));
        let mut s = RedisServer {
            port: free_port(),
            dir,
            child: None,
            durable: true,
            extra,
            password: Some(password.to_owned()),
        };
        s.launch();
        s
    }

    /// A Sentinel with `requirepass`, monitoring `localhost:<master_port>` as `name` with
    /// the given quorum, quick to declare a node down (1 s) and to fail over; hostnames
    /// resolved and announced (`resolve-hostnames`/`announce-hostnames yes`).
    /// `sentinel_password: false` leaves the Sentinel itself open (no `requirepass`).
    pub fn start_sentinel_for(
        name: &str,
        master_port: u16,
        quorum: u32,
        password: &str,
        sentinel_password: bool,
    ) -> Self {
        Self::start_sentinel_with(name, master_port, quorum, password, sentinel_password, 4000)
    }

    /// As [`RedisServer::start_sentinel_for`], with the given `failover-timeout`: how long a
    /// fail-over may wait for the other replicas to follow the new primary before it
    /// switches anyway.
    pub fn start_sentinel_with(
        name: &str,
        master_port: u16,
        quorum: u32,
        password: &str,
        sentinel_password: bool,
        failover_timeout_ms: u32,
    ) -> Self {
        let dir = sentinel_dir();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        let requirepass = if sentinel_password {
            format!("requirepass {password}")
        } else {
            String::new()
        };
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\n{requirepass}\n\
                 sentinel resolve-hostnames yes\nsentinel announce-hostnames yes\n\
                 sentinel monitor {name} localhost {master_port} {quorum}\n\
                 sentinel auth-pass {name} {password}\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} {failover_timeout_ms}\n"
            ),
        )
        .expect("sentinel.conf");
        let mut s = RedisServer {
            port,
            dir,
            child: None,
            durable: false,
            extra: vec![conf.to_string_lossy().into_owned(), "--sentinel".into()],
            password: sentinel_password.then(|| password.to_owned()),
        };
        s.launch();
        s
    }

    /// Runs one command with `redis-cli` (authenticated when the server has a password);
    /// the reply as redis-cli prints it, one element per line.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let bin = find_binary("redis-cli", &[]);
        let mut cmd = Command::new(bin);
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        cmd.args(self.cli_tls_args());
        if let Some(pw) = &self.password {
            cmd.env("REDISCLI_AUTH", pw);
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("redis-cli: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || text.starts_with("ERR") || text.starts_with("WRONGPASS") {
            return Err(format!(
                "redis-cli {args:?} on port {}: {text} {}",
                self.port,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(text)
    }

    /// Restarts this node as a replica of `primary_port` (how a Redis Pod of a Sentinel
    /// set starts: it asks the Sentinels for the primary first).
    pub fn restart_as_replica_of(&mut self, primary_port: u16) {
        if let Some(i) = self.extra.iter().position(|a| a == "--replicaof") {
            self.extra.drain(i..i + 3);
        }
        self.extra.extend([
            "--replicaof".into(),
            "localhost".into(),
            primary_port.to_string(),
        ]);
        self.restart();
    }

    /// `--tls --cacert <CA>` for a server that speaks only TLS, else nothing.
    fn cli_tls_args(&self) -> Vec<String> {
        match self.extra.iter().position(|a| a == "--tls-ca-cert-file") {
            Some(i) if self.extra.iter().any(|a| a == "--tls-port") => {
                vec!["--tls".into(), "--cacert".into(), self.extra[i + 1].clone()]
            }
            _ => Vec::new(),
        }
    }

    /// Whether the process is running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn launch(&mut self) {
        let bin = find_binary("redis-server", &[]);
        let mut cmd = Command::new(bin);
        let sentinel = self.extra.iter().any(|a| a == "--sentinel");
        if sentinel {
            // The config file must come first; it carries port and bind.
            cmd.args(&self.extra);
        }
        let tls = self.extra.iter().any(|a| a == "--tls-port");
        let plain_port = if tls {
            "0".to_string()
        } else {
            self.port.to_string()
        };
        cmd.args(["--bind", "127.0.0.1"]);
        if !sentinel {
            cmd.args(["--port", &plain_port]);
        }
        cmd.args([
            "--dir",
            self.dir.path().to_str().unwrap_or("."),
            "--save",
            "",
            "--appendonly",
            if self.durable { "yes" } else { "no" },
            "--appendfsync",
            "always",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        if !sentinel {
            cmd.args(&self.extra);
        }
        self.child = Some(spawn_owned(cmd, None));
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "redis-server did not start"
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL: no chance to flush anything beyond what it already acknowledged.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the server keeps its connections open and answers nothing (a hung backend).
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            signal_tree(c.id(), libc::SIGSTOP);
        }
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        if let Some(c) = &self.child {
            signal_tree(c.id(), libc::SIGCONT);
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `cmd` to its end, or kills it after `limit` and panics with what it printed
/// (`redis-cli --cluster` waits for ever for nodes that cannot meet). Its output is read
/// as it comes: a reshard's plan alone can fill a pipe.
fn output_within(mut cmd: Command, limit: Duration, what: &str) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let read = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut text);
            }
            text
        })
    };
    let out = read(child.stdout.take().map(|r| Box::new(r) as _));
    let err = read(child.stderr.take().map(|r| Box::new(r) as _));
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            break Some(status);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = format!(
        "{}{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    match status {
        Some(s) => (s.success(), text),
        None => panic!("{what} did not finish within {limit:?}: {text}"),
    }
}

/// A Redis Cluster on loopback: three primaries and one replica each (`redis-cli --cluster
/// create --cluster-replicas 1`), durable (append-only, fsync always), quick to fail over
/// (`cluster-node-timeout` 1000 ms), and serving the slots of the other primaries while
/// one has none (`cluster-require-full-coverage no`). Killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// The same, speaking only TLS (clients, the cluster bus and replication), with a
    /// certificate for 127.0.0.1 and localhost signed by `tls`'s CA, and `requirepass` /
    /// `masterauth` set to `password`.
    pub fn start_tls(tls: &crate::tls::TestCa, password: &str) -> Self {
        Self::start_with(Some((tls, password)))
    }

    fn start_with(tls: Option<(&crate::tls::TestCa, &str)>) -> Self {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                let dir = tempfile::tempdir().expect("tempdir");
                let port = free_port();
                let mut extra: Vec<String> = Vec::new();
                if let Some((tls, password)) = tls {
                    extra.extend([
                        "--requirepass".into(),
                        password.to_owned(),
                        "--masterauth".into(),
                        password.to_owned(),
                    ]);
                    extra.extend(tls_args(tls, port));
                    extra.extend([
                        "--tls-cluster".into(),
                        "yes".into(),
                        "--tls-replication".into(),
                        "yes".into(),
                    ]);
                }
                let mut s = RedisServer {
                    port,
                    dir,
                    child: None,
                    durable: true,
                    extra: [
                        "--cluster-enabled",
                        "yes",
                        // Not the default port + 10000, which may be past 65535.
                        "--cluster-port",
                        &free_port().to_string(),
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "1000",
                        "--cluster-require-full-coverage",
                        "no",
                        // A replica may take over however long it was cut off.
                        "--cluster-replica-validity-factor",
                        "0",
                        "--repl-diskless-sync-delay",
                        "0",
                    ]
                    .map(String::from)
                    .into_iter()
                    .chain(extra)
                    .collect(),
                    password: tls.map(|(_, pw)| pw.to_owned()),
                };
                s.launch();
                s
            })
            .collect();
        let mut cmd = Command::new(find_binary("redis-cli", &[]));
        cmd.args(nodes[0].cli_tls_args());
        if let Some(pw) = &nodes[0].password {
            cmd.env("REDISCLI_AUTH", pw);
        }
        cmd.arg("--cluster").arg("create");
        for n in &nodes {
            cmd.arg(format!("127.0.0.1:{}", n.port));
        }
        cmd.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let (ok, out) = output_within(cmd, Duration::from_secs(60), "redis-cli --cluster create");
        assert!(ok, "redis-cli --cluster create failed: {out}");
        let c = RedisCluster { nodes };
        assert!(
            c.wait_healthy(Duration::from_secs(30)),
            "the Redis Cluster did not come up: {:?}",
            c.nodes[0].cli(&["CLUSTER", "NODES"])
        );
        c
    }

    /// `redis+cluster://` (`rediss+cluster://` for a TLS cluster) naming every node as a seed.
    pub fn uri(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let tls = self.nodes[0].extra.iter().any(|a| a == "--tls-port");
        let scheme = if tls { "rediss" } else { "redis" };
        format!("{scheme}+cluster://{}/", hosts.join(","))
    }

    /// Moves `slots` slots (with their keys) from the primary `from` to the primary `to`
    /// (`redis-cli --cluster reshard`); blocks until done.
    pub fn reshard(&self, from: u16, to: u16, slots: u32) {
        let id = |port: u16| {
            self.nodes
                .iter()
                .find(|n| n.port == port)
                .and_then(|n| n.cli(&["CLUSTER", "MYID"]).ok())
                .expect("CLUSTER MYID")
        };
        let mut cmd = Command::new(find_binary("redis-cli", &[]));
        cmd.args(self.nodes[0].cli_tls_args());
        if let Some(pw) = &self.nodes[0].password {
            cmd.env("REDISCLI_AUTH", pw);
        }
        cmd.args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"]);
        let (ok, out) = output_within(cmd, Duration::from_secs(120), "redis-cli --cluster reshard");
        assert!(ok, "redis-cli --cluster reshard failed: {out}");
    }

    /// Every node running answers `cluster_state:ok`, three primaries serve every slot, and
    /// each has a replica with its link up.
    pub fn wait_healthy(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            let states_ok = self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                n.cli(&["CLUSTER", "INFO"]).is_ok_and(|i| {
                    i.contains("cluster_state:ok") && i.contains("cluster_slots_ok:16384")
                })
            });
            let linked = self
                .nodes
                .iter()
                .filter(|n| n.is_running())
                .filter(|n| n.cli(&["ROLE"]).is_ok_and(|r| r.starts_with("slave")))
                .filter(|n| {
                    n.cli(&["INFO", "replication"])
                        .is_ok_and(|i| i.contains("master_link_status:up"))
                })
                .count();
            if states_ok && linked >= 3 && self.primaries().len() == 3 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Port of every node `CLUSTER NODES` (asked of a running node) lists as a primary
    /// that is not failed, with its slot ranges.
    pub fn primaries(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        let Some(text) = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .find_map(|n| n.cli(&["CLUSTER", "NODES"]).ok())
        else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let flags = f.get(2)?;
                if !flags.contains("master") || flags.contains("fail") {
                    return None;
                }
                let port = f
                    .get(1)?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                let ranges: Vec<(u16, u16)> = f
                    .iter()
                    .skip(8)
                    .filter(|r| !r.starts_with('['))
                    .filter_map(|r| match r.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => r.parse().ok().map(|a| (a, a)),
                    })
                    .collect();
                (!ranges.is_empty()).then_some((port, ranges))
            })
            .collect()
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .find_map(|n| n.cli(&["CLUSTER", "KEYSLOT", key]).ok())
            .and_then(|s| s.parse().ok())
            .expect("CLUSTER KEYSLOT")
    }

    /// The port of the primary serving `slot`, if any.
    pub fn primary_of(&self, slot: u16) -> Option<u16> {
        self.primaries()
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|(p, _)| p)
    }

    pub fn node(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("no such cluster node")
    }
}

/// A Redis primary, its replicas (`replicaof`) and three Sentinels (quorum 2), all with one
/// password (`requirepass`, `masterauth`, Sentinel `requirepass` and `auth-pass`), as the
/// operator's managed Redis runs them. Nodes announce themselves as `localhost` and the
/// Sentinels announce hostnames, so the primary's address the Sentinels give is a hostname.
/// Everything is killed on drop.
pub struct SentinelRedis {
    pub name: String,
    pub password: String,
    /// `nodes[0]` is the primary at start.
    pub nodes: Vec<RedisServer>,
    pub sentinels: Vec<RedisServer>,
}

impl SentinelRedis {
    /// Starts the primary, `replicas` replicas and three Sentinels, and waits until every
    /// Sentinel knows the replicas and the two other Sentinels (so a fail-over can happen).
    pub fn start(replicas: usize) -> Self {
        Self::start_with(replicas, true)
    }

    /// As [`SentinelRedis::start`]; `sentinel_password: false` leaves the Sentinels open
    /// (the nodes keep their password).
    pub fn start_with(replicas: usize, sentinel_password: bool) -> Self {
        let password = format!("pw-{}-{}", std::process::id(), free_port());
        let name = "sessions".to_string();
        let primary = RedisServer::start_node(&password, None);
        let port = primary.port;
        let mut nodes = vec![primary];
        for _ in 0..replicas {
            nodes.push(RedisServer::start_node(&password, Some(port)));
        }
        let sentinels = (0..3)
            .map(|_| RedisServer::start_sentinel_for(&name, port, 2, &password, sentinel_password))
            .collect();
        let set = SentinelRedis {
            name,
            password,
            nodes,
            sentinels,
        };
        assert!(
            set.wait_replicas_online(port, replicas, Duration::from_secs(15)),
            "replicas did not sync with the primary"
        );
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = set.sentinels.iter().all(|s| {
                let f = set.master_fields(s);
                let num = |k: &str| f.get(k).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
                num("num-other-sentinels") >= 2 && num("num-slaves") >= replicas
            });
            if ready {
                break;
            }
            assert!(
                Instant::now() < end,
                "Sentinels did not discover each other"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        set
    }

    /// `redis+sentinel://127.0.0.1:a,127.0.0.1:b,127.0.0.1:c/<name>/0` (no password: the
    /// sidecar takes it from `DKN_AUTH_REDIS_PASSWORD`).
    pub fn uri(&self) -> String {
        self.uri_for(&self.name)
    }

    /// As [`SentinelRedis::uri`] for another master name.
    pub fn uri_for(&self, name: &str) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{name}/0", hosts.join(","))
    }

    fn master_fields(&self, sentinel: &RedisServer) -> std::collections::HashMap<String, String> {
        let text = sentinel
            .cli(&["SENTINEL", "MASTER", &self.name])
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_owned(), c[1].to_owned()))
            .collect()
    }

    /// The primary's port as the running Sentinels name it, when a majority agree.
    pub fn primary_port(&self) -> Option<u16> {
        let mut votes: Vec<u16> = self
            .sentinels
            .iter()
            .filter(|s| s.is_running())
            .filter_map(|s| {
                let f = self.master_fields(s);
                f.get("port").and_then(|p| p.parse().ok())
            })
            .collect();
        votes.sort_unstable();
        let majority = self.sentinels.len() / 2 + 1;
        votes
            .chunk_by(|a, b| a == b)
            .find(|g| g.len() >= majority)
            .map(|g| g[0])
    }

    /// Waits until a majority of Sentinels name a primary other than `old`; its port.
    pub fn wait_new_primary(&self, old: u16, limit: Duration) -> Option<u16> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            match self.primary_port() {
                Some(p) if p != old => return Some(p),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        None
    }

    /// The node listening on `port`.
    pub fn node(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// Waits until the node on `port` is a primary with at least `n` replicas online.
    pub fn wait_replicas_online(&self, port: u16, n: usize, limit: Duration) -> bool {
        let Some(node) = self.nodes.iter().find(|x| x.port == port) else {
            return false;
        };
        let end = Instant::now() + limit;
        while Instant::now() < end {
            let info = node.cli(&["INFO", "replication"]).unwrap_or_default();
            let online = info
                .lines()
                .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                .count();
            if info.contains("role:master") && online >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

fn postgres_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.reverse();
    dirs
}

fn user_ids(name: &str) -> Option<(u32, u32)> {
    let out = |flag: &str| -> Option<u32> {
        let o = Command::new("id").args([flag, name]).output().ok()?;
        String::from_utf8(o.stdout).ok()?.trim().parse().ok()
    };
    Some((out("-u")?, out("-g")?))
}

pub struct PostgresServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    run_as: Option<(u32, u32)>,
}

impl PostgresServer {
    /// initdb + postgres on a free loopback port; as root, runs as the `postgres` user
    /// (PostgreSQL refuses to run as root).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(user_ids("postgres").expect(
                "running as root needs the postgres user (apt-get install postgresql creates it)",
            ))
        } else {
            None
        };
        if let Some((uid, gid)) = run_as {
            let p = std::ffi::CString::new(dir.path().to_str().unwrap_or("/tmp")).expect("path");
            unsafe {
                libc::chown(p.as_ptr(), uid, gid);
            }
        }
        let bins = postgres_bin_dirs();
        let initdb = find_binary("initdb", &bins);
        let mut cmd = Command::new(initdb);
        cmd.args([
            "-D",
            &Self::data(dir.path()),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        if let Some((uid, gid)) = run_as {
            cmd.uid(uid).gid(gid);
        }
        let status = cmd.status().expect("initdb");
        assert!(status.success(), "initdb failed");
        let mut s = PostgresServer {
            port: free_port(),
            dir,
            child: None,
            run_as,
        };
        s.launch();
        s
    }

    fn data(dir: &Path) -> String {
        dir.join("data").to_string_lossy().into_owned()
    }

    fn launch(&mut self) {
        let bin = find_binary("postgres", &postgres_bin_dirs());
        let mut cmd = Command::new(bin);
        cmd.args([
            "-D",
            &Self::data(self.dir.path()),
            "-p",
            &self.port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            &format!("unix_socket_directories={}", self.dir.path().display()),
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=64MB",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        self.child = Some(spawn_owned(cmd, self.run_as));
        assert!(
            wait_for_port(self.port, Duration::from_secs(20)),
            "postgres did not start"
        );
        // Accepting TCP is not yet accepting queries: wait for pg_isready.
        let isready = find_binary("pg_isready", &postgres_bin_dirs());
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            let ok = Command::new(&isready)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("postgres did not become ready");
    }

    pub fn url(&self) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// SIGKILL of the postmaster: crash recovery replays the WAL on restart.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            // Backends outlive a killed postmaster for a moment; wait until the port is free.
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// SIGSTOP of the postmaster and every backend: connections stay open, nothing answers.
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            signal_tree(c.id(), libc::SIGSTOP);
        }
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        if let Some(c) = &self.child {
            signal_tree(c.id(), libc::SIGCONT);
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        // The killed postmaster leaves its pid file; postgres refuses to start while it
        // names a live process, which it no longer does.
        let _ = std::fs::remove_file(self.dir.path().join("data").join("postmaster.pid"));
        self.launch();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.kill();
    }
}
