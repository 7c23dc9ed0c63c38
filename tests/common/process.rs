//! Real child processes for the tests that run programs (the `mxp` binary,
//! `ip`): one harness, so every such test gets the same two guarantees.
//!
//! - No child outlives its test, even one that panicked: a leftover node
//!   would hold its port, and a leftover `ip netns exec` its namespace, and
//!   break the next run in ways that look like unrelated failures.
//! - No wait hangs the run: every wait has a deadline ([`PATIENCE`]) after
//!   which the child is killed and the test fails, saying what the child
//!   printed, since that is usually the only clue to why it hung.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Upper bound for any child or call to finish: a guard against hangs, not
/// a performance expectation.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// A child process killed (SIGKILL) and reaped when dropped, so that no
/// process outlives a test, even one that panicked.
pub(crate) struct Guarded {
    pub child: Child,
    pub what: String,
}

impl Guarded {
    /// Starts `cmd` with stdout and stderr piped (tests read them; stdin is
    /// closed so a child that reads it sees the end instead of waiting).
    pub(crate) fn spawn(mut cmd: Command, what: impl Into<String>) -> Guarded {
        let what = what.into();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Guarded { child, what }
    }

    /// Waits for the child to exit, killing it and failing the test after
    /// [`PATIENCE`]. `on_timeout` supplies what the child printed so far;
    /// it runs after the kill, so pipe readers it joins have ended.
    pub(crate) fn wait(&mut self, on_timeout: impl FnOnce() -> String) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let output = on_timeout();
                    panic!(
                        "{} did not finish within {PATIENCE:?} (killed); it printed:\n{output}",
                        self.what
                    );
                }
                Err(e) => panic!("waiting for {}: {e}", self.what),
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Reads a pipe to its end on a thread (so a chatty child never blocks on
/// a full pipe).
pub(crate) fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// Reads a pipe line by line on a thread, for a test that must react to a
/// running child's output (a node's startup lines) before it exits.
pub(crate) fn read_lines(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        // Reads to the end even when nobody listens any more: a closed
        // pipe would make the child's last lines fail.
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    lines
}

/// How a finished command went.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub(crate) fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Fails unless the command exited 0.
    pub(crate) fn success(self) -> Outcome {
        assert!(self.status.success(), "{} failed: {self:#?}", self.what);
        self
    }

    /// The single line a failing command must print on stderr; fails if it
    /// printed more or less, or panicked.
    pub(crate) fn one_error_line(&self) -> &str {
        assert!(
            !self.stderr.contains("panicked"),
            "{} panicked: {}",
            self.what,
            self.stderr
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{}: expected one error line on stderr, got {lines:#?}",
            self.what
        );
        lines[0]
    }
}

/// Runs a command to completion (or fails the test after [`PATIENCE`]).
pub(crate) fn run_command(cmd: Command, what: String) -> Outcome {
    let mut child = Guarded::spawn(cmd, what.clone());
    let out = drain(child.child.stdout.take());
    let err = drain(child.child.stderr.take());
    let mut readers = Some((out, err));
    let status = child.wait(|| {
        // The child is dead, so its pipes are closed and the readers end.
        let (out, err) = readers.take().expect("readers");
        format!(
            "stdout:\n{}\nstderr:\n{}",
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default()
        )
    });
    let (out, err) = readers.take().expect("readers");
    Outcome {
        what,
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}
