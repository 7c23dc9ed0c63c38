//! The threads that do handshake work: the Diffie-Hellman of accepting a
//! session (the MXP carrier's handshake jobs, the QUIC carrier's identity
//! exchange), apart from the tasks that move established connections'
//! packets.
//!
//! A flood of initiations can then cost at most these threads' share of
//! the CPU; packets of established connections never wait behind a DH,
//! nor behind the endpoint lock while one runs. The threads run at a lower
//! scheduling priority (nice 10 on Linux), so when the machine is short of
//! CPU, established traffic is served first and handshakes wait: the
//! handshake queue fills, and the carriers' load detection demands address
//! validation.
//!
//! Each carrier bounds the work it hands over (the MXP core hands out at
//! most `handshake_workers` jobs at once; the QUIC carrier holds a permit
//! per exchange), so the queue here is bounded by construction.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tracing::debug;

type Work = Box<dyn FnOnce() + Send>;

/// Scheduling priority of the worker threads (Linux nice value): below
/// the threads that move packets, so a flood's handshake work yields to
/// established traffic when CPU is short.
const NICE: i32 = 10;

/// A node's handshake worker threads. Dropping the last handle lets them
/// finish what they hold and exit.
#[derive(Debug)]
pub(crate) struct HandshakeWorkers {
    tx: Mutex<mpsc::Sender<Work>>,
}

impl HandshakeWorkers {
    /// Starts `threads` workers.
    pub(crate) fn start(threads: usize) -> Arc<HandshakeWorkers> {
        let (tx, rx) = mpsc::channel::<Work>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = threads.max(1);
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("mxp-handshake-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let next = crate::lock(&rx).recv();
                        match next {
                            Ok(work) => work(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                // The OS refused a thread: the others (or none: then jobs
                // run where they are handed over, see `run`) carry on.
                debug!(error = %e, "cannot start a handshake worker");
            }
        }
        Arc::new(HandshakeWorkers { tx: Mutex::new(tx) })
    }

    /// Runs `work` on a worker. If no worker is left (the OS refused every
    /// thread), runs it here rather than lose it.
    pub(crate) fn run(&self, work: impl FnOnce() + Send + 'static) {
        let sent = crate::lock(&self.tx).send(Box::new(work));
        if let Err(mpsc::SendError(work)) = sent {
            work();
        }
    }

    /// Runs `work` on a worker and waits for its result (`None` if the
    /// worker died doing it).
    pub(crate) async fn compute<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.run(move || {
            let _ = tx.send(work());
        });
        rx.await.ok()
    }
}

fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), NICE) {
            debug!(error = %e, "cannot lower the handshake worker's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_a_worker_thread_and_its_result_comes_back() {
        let workers = HandshakeWorkers::start(2);
        let here = std::thread::current().id();
        let (name, id) = workers
            .compute(|| {
                let t = std::thread::current();
                (t.name().map(str::to_owned), t.id())
            })
            .await
            .expect("the worker answers");
        assert_eq!(
            name.as_deref().map(|n| n.starts_with("mxp-handshake-")),
            Some(true)
        );
        assert_ne!(id, here);
    }
}
