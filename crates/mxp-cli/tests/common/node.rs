//! The `mxp` binary as a child process: keys, a running node (its printed
//! addresses, signals, stop), and one-shot commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Instant;

use mxp::proto::PublicKey;

use super::process::{Guarded, Outcome, PATIENCE, drain, read_lines, run_command};
use super::tempdir::{TempDir, path_str};

pub(crate) fn mxp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mxp"))
}

/// Runs `mxp ARGS...` to completion.
pub(crate) fn run(args: &[&str]) -> Outcome {
    let mut cmd = mxp();
    cmd.args(args);
    run_command(cmd, format!("mxp {}", args.join(" ")))
}

/// A node keypair written by `mxp keygen`.
pub(crate) struct Keys {
    pub dir: TempDir,
    pub public: String,
}

impl Keys {
    pub(crate) fn generate(name: &str) -> Keys {
        let dir = TempDir::new(name);
        let out = run(&["keygen", "--out", path_str(dir.dir())]).success();
        Keys {
            public: out.stdout.trim().to_owned(),
            dir,
        }
    }

    pub(crate) fn secret_file(&self) -> PathBuf {
        self.dir.path("node.key")
    }
}

/// A running `mxp serve`, killed when dropped.
pub(crate) struct Node {
    pub process: Guarded,
    pub addr: SocketAddr,
    pub key: String,
    /// Lines of stdout after the two startup lines.
    pub stdout: Receiver<String>,
    /// The startup lines up to and including the public key.
    pub banner: Vec<String>,
    pub stderr: Option<JoinHandle<String>>,
}

impl Node {
    /// Starts `mxp serve ARGS...` and waits for it to print its address and
    /// public key.
    pub(crate) fn start(args: &[&str]) -> Node {
        let mut cmd = mxp();
        cmd.arg("serve").args(args);
        Node::start_command(cmd, format!("mxp serve {}", args.join(" ")))
    }

    pub(crate) fn start_command(cmd: Command, what: String) -> Node {
        let mut process = Guarded::spawn(cmd, what);
        let lines = read_lines(process.child.stdout.take().expect("piped stdout"));
        let stderr = drain(process.child.stderr.take());
        let deadline = Instant::now() + PATIENCE;
        let (mut addr, mut key) = (None, None);
        let mut seen = Vec::new();
        while addr.is_none() || key.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("mxp node listening on ") {
                        addr = Some(a.trim().parse::<SocketAddr>().unwrap_or_else(|e| {
                            panic!("{}: bad address in {line:?}: {e}", process.what)
                        }));
                    } else if let Some(k) = line.strip_prefix("public key: ") {
                        key = Some(k.split_whitespace().next().unwrap_or_default().to_owned());
                    }
                    seen.push(line);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Stdout closed: the node exited before it was ready.
                    let status = process.wait(String::new);
                    drop(process.child.stdout.take());
                    panic!(
                        "{} exited ({status}) before it was ready; stdout: {seen:#?}; stderr:\n{}",
                        process.what,
                        stderr.join().unwrap_or_default()
                    );
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = process.child.kill();
                    panic!(
                        "{} printed no address and key within {PATIENCE:?}; stdout: {seen:#?}",
                        process.what
                    );
                }
            }
        }
        Node {
            process,
            addr: addr.expect("address"),
            key: key.expect("key"),
            stdout: lines,
            banner: seen,
            stderr: Some(stderr),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("mxp://{}", self.addr)
    }

    /// The address printed after `prefix` in the startup lines.
    pub(crate) fn printed_addr(&self, prefix: &str) -> SocketAddr {
        self.banner
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {:#?}", self.banner))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{prefix:?}: {e} in {:#?}", self.banner))
    }

    /// The admin endpoint's address, as printed.
    pub(crate) fn admin_addr(&self) -> String {
        self.printed_addr("admin endpoint on http://").to_string()
    }

    /// The next stdout lines after the startup lines, until one starting
    /// with `prefix` (inclusive).
    pub(crate) fn lines_until(&self, prefix: &str) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    let done = line.starts_with(prefix);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(e) => panic!("no line starting {prefix:?} ({e:?}); saw {seen:#?}"),
            }
        }
    }

    /// Sends the node a signal by name (`HUP`, `TERM`...).
    pub(crate) fn signal(&self, name: &str) {
        let pid = self.process.pid().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("the kill command");
        assert!(sent.success(), "kill -{name} {pid} failed");
    }

    pub(crate) fn public_key(&self) -> PublicKey {
        self.key.parse().expect("the node prints a valid key")
    }

    /// `mxp ping URL --server-key KEY ARGS...` against this node.
    pub(crate) fn ping(&self, args: &[&str]) -> Outcome {
        ping(&self.url(), &self.key, args)
    }

    /// Crash: SIGKILL, no chance to close anything.
    pub(crate) fn kill(mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
    }

    /// Stops the node the way a service manager does (SIGTERM) and returns
    /// everything it printed after starting.
    pub(crate) fn terminate(mut self) -> Outcome {
        let pid = self.process.pid().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("the kill command");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let status = self.process.wait(String::new);
        let stdout: Vec<String> = self.stdout.iter().collect();
        Outcome {
            what: self.process.what.clone(),
            status,
            stdout: stdout.join("\n"),
            stderr: self
                .stderr
                .take()
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default(),
        }
    }
}

/// `mxp ping URL --server-key KEY ARGS...`
pub(crate) fn ping(url: &str, key: &str, args: &[&str]) -> Outcome {
    let mut all = vec!["ping", url, "--server-key", key];
    all.extend_from_slice(args);
    run(&all)
}
