//! Drives Odoo's session pattern (read a ~2 KB session, then write 1-2 keys) and compares,
//! in one run: sidecar + Redis, the same pattern straight to Redis as camptocamp
//! `session_redis` does it (GET, then SET + EXPIRE), sidecar + PostgreSQL, sidecar + memory.
//! Every server is started here on loopback; results are printed as Markdown.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use http::Method;
use odoo_ha_testkit::{free_port, Client, PostgresServer, RedisServer};
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(about = "Side-by-side benchmark of the session sidecar against direct Redis")]
struct Args {
    /// The sidecar binary (build it with --release).
    #[arg(long, default_value = "target/release/odoo-session-sidecar")]
    sidecar: PathBuf,
    /// Seconds per measured scenario.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Connection counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    connections: Vec<usize>,
    /// Stored sessions for the identifier look-up benchmark (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    sessions: usize,
    /// Identifiers per look-up request.
    #[arg(long, default_value_t = 10_000)]
    lookup: usize,
    /// DKN_AUTH_REDIS_MAX_CONN of the Redis sidecar.
    #[arg(long, default_value_t = 64)]
    redis_max_conn: usize,
    /// Skip the PostgreSQL scenarios.
    #[arg(long)]
    no_postgres: bool,
    /// Instead of the full tables: the throughput comparison of sidecar + Redis with direct
    /// Redis, one row per setup and round, interleaved. A setup is `key=value` pairs joined
    /// by `/`: `bin=N` (the Nth `--sidecar`, from 0), `client=tcp|unix` (bench to sidecar),
    /// `redis=tcp|unix` (sidecar to Redis), `max-conn=N` (DKN_AUTH_REDIS_MAX_CONN),
    /// `threads=N` (TOKIO_WORKER_THREADS of the sidecar); e.g.
    /// `--setup bin=0 --setup bin=1/client=unix/redis=unix/max-conn=1`.
    #[arg(long)]
    setup: Vec<String>,
    /// More sidecar binaries for `--setup bin=N` (`--sidecar` is bin=0).
    #[arg(long = "other-sidecar")]
    other_sidecars: Vec<PathBuf>,
    /// Rounds of the comparison (each round runs every direct baseline and every setup).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// One sidecar configuration of the throughput comparison (`--setup`).
#[derive(Clone, Debug)]
struct Setup {
    text: String,
    bin: usize,
    client_unix: bool,
    redis_unix: bool,
    max_conn: Option<usize>,
    threads: Option<usize>,
}

impl Setup {
    fn parse(text: &str) -> Result<Setup, String> {
        let mut s = Setup {
            text: text.to_owned(),
            bin: 0,
            client_unix: false,
            redis_unix: false,
            max_conn: None,
            threads: None,
        };
        let unix = |v: &str| match v {
            "tcp" => Ok(false),
            "unix" => Ok(true),
            _ => Err(format!("--setup {text}: expected tcp or unix, got {v}")),
        };
        let number = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("--setup {text}: expected a number, got {v}"))
        };
        for pair in text.split('/').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("bin", v)) => s.bin = number(v)?,
                Some(("client", v)) => s.client_unix = unix(v)?,
                Some(("redis", v)) => s.redis_unix = unix(v)?,
                Some(("max-conn", v)) => s.max_conn = Some(number(v)?),
                Some(("threads", v)) => s.threads = Some(number(v)?),
                _ => return Err(format!("--setup {text}: unknown part {pair}")),
            }
        }
        Ok(s)
    }
}

/// A sidecar process of its own, so its CPU time and memory can be read from /proc.
struct Sidecar {
    child: tokio::process::Child,
    addr: String,
}

impl Sidecar {
    async fn start(bin: &PathBuf, driver_flags: &[String]) -> Sidecar {
        Self::start_with(bin, driver_flags, None, &[]).await
    }

    /// `socket`: serve on this Unix socket instead of TCP; `env`: extra variables.
    async fn start_with(
        bin: &PathBuf,
        driver_flags: &[String],
        socket: Option<&std::path::Path>,
        env: &[(&str, String)],
    ) -> Sidecar {
        let (listen, addr) = match socket {
            Some(path) => (
                format!("--socket={}", path.display()),
                format!("unix:{}", path.display()),
            ),
            None => {
                let addr = format!("127.0.0.1:{}", free_port());
                (format!("--listen={addr}"), addr)
            }
        };
        let child = tokio::process::Command::new(bin)
            .arg(listen)
            .arg("--log-level=error")
            .args(driver_flags)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let s = Sidecar { child, addr };
        let mut c = Client::new(s.addr.clone());
        for _ in 0..400 {
            // Plain /readyz is 200 at once; ?backend=1 waits until the backend answers too.
            if let Ok(r) = c.get("/readyz?backend=1").await {
                if r.status == 200 {
                    return s;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("sidecar {driver_flags:?} never became ready");
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// User + system CPU seconds so far.
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(self.pid())
    }

    fn rss_mb(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

/// User + system CPU seconds of a process so far (`self` for this one).
fn cpu_seconds_of(pid: impl std::fmt::Display) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime), counted after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

/// An Odoo 16-like session of about 2 KB.
fn session_payload(uid: u64) -> Value {
    let trace: Vec<Value> = (0..6)
        .map(|i| json!({"platform": "linux", "browser": "firefox", "ip_address": format!("10.0.0.{i}"), "first_activity": 1_700_000_000 + i, "last_activity": 1_700_003_600 + i}))
        .collect();
    json!({
        "context": {"lang": "en_US", "tz": "Europe/Brussels", "uid": uid, "allowed_company_ids": [1, 2, 3]},
        "db": "odoo",
        "debug": "",
        "login": format!("user{uid}@example.com"),
        "uid": uid,
        "session_token": format!("{:064x}", uid.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        "_trace": trace,
        "website_sale_current_pl": 1,
        "padding": "x".repeat(900),
    })
}

fn sid(worker: usize, n: usize) -> String {
    format!("{:08x}{:032x}", worker, n)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Sidecar,
    DirectRedis,
}

struct Outcome {
    reads: Histogram<u64>,
    writes: Histogram<u64>,
    ops: u64,
    errors: u64,
    elapsed: Duration,
}

const SESSIONS_PER_WORKER: usize = 50;

async fn seed(target: Target, addr: &str, workers: usize) {
    for w in 0..workers {
        match target {
            Target::Sidecar => {
                let mut c = Client::new(addr.to_owned());
                for n in 0..SESSIONS_PER_WORKER {
                    let r = c
                        .json(
                            Method::PUT,
                            &format!("/v1/sessions/{}", sid(w, n)),
                            &[],
                            &json!({"data": session_payload(n as u64)}),
                        )
                        .await
                        .expect("seed");
                    assert!(r.status.is_success(), "seed: {r:?}");
                }
            }
            Target::DirectRedis => {
                let client = redis::Client::open(addr).expect("redis url");
                let mut c = client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("redis");
                for n in 0..SESSIONS_PER_WORKER {
                    let key = format!("session:{}", sid(w, n));
                    let _: () = redis::cmd("SET")
                        .arg(&key)
                        .arg(session_payload(n as u64).to_string())
                        .query_async(&mut c)
                        .await
                        .expect("seed");
                    let _: () = redis::cmd("EXPIRE")
                        .arg(&key)
                        .arg(604_800)
                        .query_async(&mut c)
                        .await
                        .expect("seed");
                }
            }
        }
    }
}

/// One worker per connection: read a session, then write one or two keys, in a loop.
async fn run(target: Target, addr: &str, workers: usize, duration: Duration) -> Outcome {
    seed(target, addr, workers).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let stop = stop.clone();
        let addr = addr.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut reads = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut writes = reads.clone();
            let mut errors = 0u64;
            let mut n = 0usize;
            let mut http = Client::new(addr.clone());
            let mut direct = match target {
                Target::DirectRedis => Some(
                    redis::Client::open(addr.as_str())
                        .expect("redis url")
                        .get_multiplexed_async_connection()
                        .await
                        .expect("redis"),
                ),
                Target::Sidecar => None,
            };
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let s = sid(w, n % SESSIONS_PER_WORKER);
                let t = Instant::now();
                match &mut direct {
                    None => {
                        let r = http.get(&format!("/v1/sessions/{s}")).await;
                        if !matches!(&r, Ok(r) if r.status == 200) {
                            errors += 1;
                        }
                        reads.saturating_record(t.elapsed().as_micros() as u64);
                        let set = if n.is_multiple_of(2) {
                            json!({"set": {"last_seen": n}})
                        } else {
                            json!({"set": {"last_seen": n, "debug": if n % 4 == 1 { "1" } else { "" }}})
                        };
                        let t = Instant::now();
                        let r = http.json(Method::PATCH, &format!("/v1/sessions/{s}"), &[], &set).await;
                        if !matches!(&r, Ok(r) if r.status == 200) {
                            errors += 1;
                        }
                        writes.saturating_record(t.elapsed().as_micros() as u64);
                    }
                    Some(conn) => {
                        let key = format!("session:{s}");
                        let got: Result<Option<String>, _> = redis::cmd("GET").arg(&key).query_async(conn).await;
                        reads.saturating_record(t.elapsed().as_micros() as u64);
                        // What the peer addon does on save: decode, change, write all back, expire.
                        let mut data: Value = match got {
                            Ok(Some(text)) => serde_json::from_str(&text).unwrap_or(Value::Null),
                            _ => {
                                errors += 1;
                                Value::Null
                            }
                        };
                        data["last_seen"] = json!(n);
                        let t = Instant::now();
                        let set: Result<(), _> = redis::cmd("SET").arg(&key).arg(data.to_string()).query_async(conn).await;
                        let exp: Result<(), _> = redis::cmd("EXPIRE").arg(&key).arg(604_800).query_async(conn).await;
                        if set.is_err() || exp.is_err() {
                            errors += 1;
                        }
                        writes.saturating_record(t.elapsed().as_micros() as u64);
                    }
                }
            }
            (reads, writes, errors)
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut out = Outcome {
        reads: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
        writes: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
        ops: 0,
        errors: 0,
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        let (r, w, e) = t.await.expect("worker");
        out.reads.add(&r).expect("merge");
        out.writes.add(&w).expect("merge");
        out.errors += e;
    }
    out.elapsed = start.elapsed();
    out.ops = out.reads.len() + out.writes.len();
    out
}

fn ms(h: &Histogram<u64>, q: f64) -> String {
    format!("{:.3}", h.value_at_quantile(q) as f64 / 1000.0)
}

fn row(name: &str, conns: usize, o: &Outcome, cpu: Option<f64>, rss: Option<f64>) -> String {
    let secs = o.elapsed.as_secs_f64();
    format!(
        "| {name} | {conns} | {:.0} | {} / {} / {} | {} / {} / {} | {} | {} | {} |",
        o.ops as f64 / secs,
        ms(&o.reads, 0.5),
        ms(&o.reads, 0.99),
        ms(&o.reads, 0.999),
        ms(&o.writes, 0.5),
        ms(&o.writes, 0.99),
        ms(&o.writes, 0.999),
        cpu.map_or("-".into(), |c| format!("{:.0} %", 100.0 * c / secs)),
        rss.map_or("-".into(), |r| format!("{r:.1} MB")),
        o.errors,
    )
}

async fn measure_sidecar(name: &str, sc: &Sidecar, conns: usize, duration: Duration) -> String {
    let cpu0 = sc.cpu_seconds();
    let o = run(Target::Sidecar, &sc.addr, conns, duration).await;
    let cpu = sc.cpu_seconds() - cpu0;
    row(name, conns, &o, Some(cpu), Some(sc.rss_mb()))
}

async fn open_connections_rss(sc: &Sidecar, n: usize) -> f64 {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = Client::new(sc.addr.clone());
        let _ = c.get("/healthz").await;
        clients.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss = sc.rss_mb();
    drop(clients);
    rss
}

/// Seeds `count` Odoo 18 sessions (one identifier each) and times "which of `lookup`
/// identifiers are missing" (half present, half not).
async fn identifier_lookup(sc: &Sidecar, count: usize, lookup: usize) -> (Duration, f64, usize) {
    let ident = |i: usize| format!("{i:040}ab");
    let seeded = Instant::now();
    let workers = 32;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let addr = sc.addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::new(addr);
            let mut i = w;
            while i < count {
                let s = format!("{}{:042}", ident(i), i);
                let r = c
                    .json(
                        Method::PUT,
                        &format!("/v1/sessions/{s}"),
                        &[],
                        &json!({"data": {"uid": i}}),
                    )
                    .await
                    .expect("seed");
                assert!(r.status.is_success(), "seed {r:?}");
                i += workers;
            }
        }));
    }
    for t in tasks {
        t.await.expect("seed worker");
    }
    let seed_time = seeded.elapsed();
    let ids: Vec<String> = (0..lookup)
        .map(|k| {
            if k % 2 == 0 {
                ident(k * 7 % count.max(1))
            } else {
                format!("{k:040}zz")
            }
        })
        .collect();
    let body = json!({"identifiers": ids});
    let mut c = Client::new(sc.addr.clone());
    let mut times = Vec::new();
    let mut missing = 0;
    for _ in 0..7 {
        let t = Instant::now();
        let r = c
            .json(Method::POST, "/v1/identifiers/missing", &[], &body)
            .await
            .expect("lookup");
        times.push(t.elapsed());
        assert_eq!(r.status, 200, "{r:?}");
        missing = r.json()["missing"].as_array().map_or(0, Vec::len);
    }
    times.sort();
    (times[times.len() / 2], seed_time.as_secs_f64(), missing)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Redis's own process id, for its CPU time.
async fn redis_pid(url: &str) -> u32 {
    let client = redis::Client::open(url).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut c)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("process_id in INFO server")
}

/// The throughput comparison (`--setup`): direct Redis and every setup, round after round,
/// with the CPU time each process spent per operation.
async fn compare(args: &Args) {
    let setups: Vec<Setup> = match args.setup.iter().map(|t| Setup::parse(t)).collect() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("odoo-session-bench: {e}");
            std::process::exit(2);
        }
    };
    let bins: Vec<&PathBuf> = std::iter::once(&args.sidecar)
        .chain(&args.other_sidecars)
        .collect();
    if let Some(s) = setups.iter().find(|s| s.bin >= bins.len()) {
        eprintln!(
            "odoo-session-bench: --setup {}: only {} sidecar binaries given",
            s.text,
            bins.len()
        );
        std::process::exit(2);
    }
    let duration = Duration::from_secs(args.duration);
    let redis = RedisServer::start_plain_with_socket();
    let redis_pid = redis_pid(&redis.url()).await;
    let mut sidecars = Vec::new();
    for (i, s) in setups.iter().enumerate() {
        let uri = if s.redis_unix {
            redis.socket_url()
        } else {
            redis.url()
        };
        let mut flags = vec!["--driver=redis".to_string(), format!("--redis-uri={uri}")];
        if let Some(n) = s.max_conn {
            flags.push(format!("--redis-max-conn={n}"));
        }
        let env: Vec<(&str, String)> = s
            .threads
            .map(|n| ("TOKIO_WORKER_THREADS", n.to_string()))
            .into_iter()
            .collect();
        let socket = s.client_unix.then(|| {
            std::env::temp_dir().join(format!(
                "odoo-session-bench-{}-{i}.sock",
                std::process::id()
            ))
        });
        sidecars.push(Sidecar::start_with(bins[s.bin], &flags, socket.as_deref(), &env).await);
    }
    let mut directs = vec![("direct Redis, TCP", redis.url())];
    if setups.iter().any(|s| s.redis_unix) {
        directs.push(("direct Redis, Unix socket", redis.socket_url()));
    }
    println!("Machine: {}. {} s per row, interleaved; read = GET of a ~2 KB session, write = PATCH of 1-2 keys (sidecar) or SET + EXPIRE of the whole session (direct). CPU = user + system time per operation of the bench process (the clients), the sidecar and Redis.
", machine(), args.duration);
    for &conns in &args.connections {
        println!("| round | scenario | connections | ops/s | read p50 / p99 (ms) | write p50 / p99 (ms) | CPU per op, bench / sidecar / Redis (µs) | errors |");
        println!("|---|---|---|---|---|---|---|---|");
        let mut direct_ops = vec![Vec::new(); directs.len()];
        let mut setup_ops = vec![Vec::new(); setups.len()];
        // Per round: sidecar / direct over the transport the sidecar uses to Redis.
        let mut ratios = vec![Vec::new(); setups.len()];
        for round in 1..=args.rounds {
            let mut this_round = Vec::new();
            for (name, url) in &directs {
                let (me, rd) = (cpu_seconds_of("self"), cpu_seconds_of(redis_pid));
                let o = run(Target::DirectRedis, url, conns, duration).await;
                let cpu = [
                    cpu_seconds_of("self") - me,
                    0.0,
                    cpu_seconds_of(redis_pid) - rd,
                ];
                println!("{}", compare_row(round, name, conns, &o, cpu, false));
                this_round.push(o.ops as f64 / o.elapsed.as_secs_f64());
            }
            for (i, ops) in this_round.iter().enumerate() {
                direct_ops[i].push(*ops);
            }
            for (i, (s, sc)) in setups.iter().zip(&sidecars).enumerate() {
                let (me, sd, rd) = (
                    cpu_seconds_of("self"),
                    sc.cpu_seconds(),
                    cpu_seconds_of(redis_pid),
                );
                let o = run(Target::Sidecar, &sc.addr, conns, duration).await;
                let cpu = [
                    cpu_seconds_of("self") - me,
                    sc.cpu_seconds() - sd,
                    cpu_seconds_of(redis_pid) - rd,
                ];
                let name = format!("sidecar + Redis `{}`", s.text);
                println!("{}", compare_row(round, &name, conns, &o, cpu, true));
                let ops = o.ops as f64 / o.elapsed.as_secs_f64();
                setup_ops[i].push(ops);
                ratios[i].push(ops / this_round[usize::from(s.redis_unix)]);
            }
        }
        println!();
        println!("| at {conns} connections | median ops/s | per round: sidecar / direct Redis over the same transport to Redis | median ratio | median / direct Redis over TCP |");
        println!("|---|---|---|---|---|");
        let direct_tcp = median(&mut direct_ops[0].clone());
        for ((name, _), ops) in directs.iter().zip(&mut direct_ops) {
            println!("| {name} | {:.0} | - | - | - |", median(ops));
        }
        for ((s, ops), r) in setups.iter().zip(&mut setup_ops).zip(&mut ratios) {
            let per_round: Vec<String> = r.iter().map(|x| format!("{x:.2}")).collect();
            let m = median(ops);
            println!(
                "| sidecar `{}` | {m:.0} | {} | **{:.2}** | {:.2} |",
                s.text,
                per_round.join(" / "),
                median(r),
                m / direct_tcp
            );
        }
        println!();
    }
}

fn compare_row(
    round: usize,
    name: &str,
    conns: usize,
    o: &Outcome,
    cpu: [f64; 3],
    sidecar: bool,
) -> String {
    let per_op = |c: f64| format!("{:.1}", c * 1e6 / o.ops.max(1) as f64);
    format!(
        "| {round} | {name} | {conns} | {:.0} | {} / {} | {} / {} | {} / {} / {} | {} |",
        o.ops as f64 / o.elapsed.as_secs_f64(),
        ms(&o.reads, 0.5),
        ms(&o.reads, 0.99),
        ms(&o.writes, 0.5),
        ms(&o.writes, 0.99),
        per_op(cpu[0]),
        if sidecar { per_op(cpu[1]) } else { "-".into() },
        per_op(cpu[2]),
        o.errors,
    )
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    if !args.setup.is_empty() {
        compare(&args).await;
        return;
    }
    let duration = Duration::from_secs(args.duration);
    let redis = RedisServer::start_plain();
    let pg = (!args.no_postgres).then(PostgresServer::start);
    let redis_sc = Sidecar::start(
        &args.sidecar,
        &[
            "--driver=redis".into(),
            format!("--redis-uri={}", redis.url()),
            format!("--redis-max-conn={}", args.redis_max_conn),
        ],
    )
    .await;
    let mem_sc = Sidecar::start(&args.sidecar, &["--driver=memory".into()]).await;
    let pg_sc = match &pg {
        Some(pg) => Some(
            Sidecar::start(
                &args.sidecar,
                &["--driver=db".into(), format!("--db-uri={}", pg.url())],
            )
            .await,
        ),
        None => None,
    };
    let idle_rss = redis_sc.rss_mb();

    println!("Machine: {}. Scenario: {} s each, read = GET of a ~2 KB session, write = PATCH of 1-2 keys (sidecar) or SET + EXPIRE of the whole session (direct, as camptocamp session_redis).\n", machine(), args.duration);
    println!("| scenario | connections | ops/s | read p50 / p99 / p99.9 (ms) | write p50 / p99 / p99.9 (ms) | sidecar CPU | sidecar RSS | errors |");
    println!("|---|---|---|---|---|---|---|---|");
    for &conns in &args.connections {
        let o = run(Target::DirectRedis, &redis.url(), conns, duration).await;
        println!(
            "{}",
            row("direct Redis (GET; SET+EXPIRE)", conns, &o, None, None)
        );
        println!(
            "{}",
            measure_sidecar("sidecar + Redis", &redis_sc, conns, duration).await
        );
        if let Some(pg_sc) = &pg_sc {
            println!(
                "{}",
                measure_sidecar("sidecar + PostgreSQL", pg_sc, conns, duration).await
            );
        }
        println!(
            "{}",
            measure_sidecar("sidecar + memory", &mem_sc, conns, duration).await
        );
    }
    println!();
    println!("Sidecar (Redis driver) RSS: idle {idle_rss:.1} MB, after the load runs {:.1} MB, with 1,000 open connections {:.1} MB.", redis_sc.rss_mb(), open_connections_rss(&redis_sc, 1000).await);
    if args.sessions > 0 {
        println!();
        println!("| backend | stored sessions | identifiers asked | missing found | median time | seeding |");
        println!("|---|---|---|---|---|---|");
        let mut list: Vec<(&str, &Sidecar)> = vec![("Redis", &redis_sc), ("memory", &mem_sc)];
        if let Some(pg_sc) = &pg_sc {
            list.push(("PostgreSQL", pg_sc));
        }
        for (name, sc) in list {
            let (t, seed, missing) = identifier_lookup(sc, args.sessions, args.lookup).await;
            println!(
                "| {name} | {} | {} | {missing} | {:.1} ms | {seed:.0} s |",
                args.sessions,
                args.lookup,
                t.as_secs_f64() * 1000.0
            );
        }
    }
}
