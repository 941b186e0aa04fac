//! The sidecar binary as a real process: its own environment, its log captured line by
//! line, signals, and bounded waits for its exit.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use odoo_ha_testkit::{free_port, Client};
use parking_lot::Mutex;

/// The binary under test: this build's, or `SIDECAR_TEST_BIN` (to run these tests against
/// another build, such as a release binary or an older commit's).
pub fn bin() -> String {
    std::env::var("SIDECAR_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_odoo-session-sidecar").to_string())
}

/// A command for the binary with no `DKN_AUTH_*` setting inherited from the caller.
pub fn command() -> Command {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("DKN_AUTH_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

pub struct Process {
    child: Child,
    /// The session listener (TCP).
    pub addr: String,
    log: Arc<Mutex<String>>,
}

impl Process {
    /// Starts the sidecar on a free loopback port with these extra flags; stderr is kept.
    pub fn start(flags: &[String]) -> Self {
        Self::spawn(command(), flags)
    }

    /// As `start`, under an open-file limit of `files` (set by `sh`'s `ulimit -n`).
    pub fn start_with_file_limit(files: u32, flags: &[String]) -> Self {
        let mut cmd = Command::new("sh");
        for (k, _) in std::env::vars() {
            if k.starts_with("DKN_AUTH_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("-c")
            .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
            .arg(bin());
        Self::spawn(cmd, flags)
    }

    fn spawn(mut cmd: Command, flags: &[String]) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        cmd.arg(format!("--listen={addr}"))
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the sidecar");
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    let mut l = log.lock();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        Process { child, addr, log }
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr.clone())
    }

    /// Waits until the process answers `/healthz` (it may still not reach its backend).
    pub async fn wait_serving(&mut self) {
        let mut c = self.client();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if matches!(c.get("/healthz").await, Ok(r) if r.status == 200) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sidecar exited at start ({status}):\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        panic!("sidecar did not start:\n{}", self.log());
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "kill -{name} {}",
            self.child.id()
        );
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Still running?
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit status, if the process exits within `limit`.
    pub async fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().clone()
    }

    /// Lines of the log containing `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Waits up to `limit` for a log line containing `needle`.
    pub async fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self.log().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
