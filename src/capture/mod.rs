//! Packet capture: what a node sends and receives, as on the wire, in a
//! pcap file that Wireshark and `tshark -r` read.
//!
//! An incident report needs the traffic before and after a change (the
//! rollout checklist's rollback plan), taken on a running node without a
//! restart and without root, which a kernel capture (`tcpdump`) needs. So
//! the endpoint records its own datagrams, encrypted exactly as sent and
//! received, switchable at runtime ([`Endpoint::start_capture`],
//! `mxp admin ADDR capture start`) or from the config file
//! (`node.capture`). A node records both carriers into one file: its MXP
//! socket, and its QUIC listener (quinn's socket, wrapped), so a capture
//! across a carrier switch shows the traffic moving from one port to the
//! other.
//!
//! # File format
//!
//! Classic pcap (not pcapng: every tool reads it), nanosecond timestamps
//! (round trips in a datacenter are tens of microseconds), link type
//! `LINKTYPE_RAW` (101): each record is an IPv4 or IPv6 header and a UDP
//! header synthesized from the datagram's real source and destination
//! addresses and ports, then the UDP payload byte for byte. IPv4 header and
//! UDP checksums are computed, so a dissector that checks them finds them
//! good. No Ethernet header is made up: there are no real MAC addresses to
//! put in one.
//!
//! # Cost on the packet path
//!
//! When no capture is recording, the endpoint's driver pays one relaxed
//! atomic load per receive batch and per send round (the QUIC listener one
//! per send and receive call). While one records, the driver copies each
//! batch's datagrams into one buffer (one allocation per batch, not per
//! datagram) and hands it to a writer *thread* with a non-blocking
//! `try_send`. The thread, not the driver, builds the headers,
//! computes checksums and writes through a 64 KiB buffer, flushed whenever
//! it has nothing queued: under load writes are large, at rest the file is
//! up to date. A thread rather than a tokio task, because file writes
//! block, and a blocked runtime worker would stall the very driver being
//! recorded. When the writer falls behind by more than
//! [`QUEUE_LIMIT_BYTES`], batches are dropped from the capture (never from
//! the network) and counted in [`CaptureSummary::dropped`].
//!
//! # Size limit
//!
//! `max_bytes` bounds the whole file, header included, to the byte. The
//! first datagram that would not fit ends the recording (later, smaller ones
//! are not squeezed in, so the file is a gap-free prefix of the traffic):
//! the file stays valid and the status says `limit-reached` until the
//! capture is stopped.
//!
//! [`Endpoint::start_capture`]: crate::Endpoint::start_capture

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use thiserror::Error;
use tracing::{info, warn};

use crate::lock;

#[cfg(feature = "capture")]
mod file;
#[cfg(not(feature = "capture"))]
#[path = "absent.rs"]
mod file;

/// Size limit of a capture when none is given: large enough for minutes of
/// moderate traffic, small enough that a forgotten capture cannot fill a
/// disk.
pub const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;

/// The smallest size limit: the pcap file header alone (24 bytes). Such a
/// capture records nothing, but is a valid file.
pub const MIN_MAX_BYTES: u64 = FILE_HEADER_LEN;

/// Bytes of datagrams handed to the writer and not yet written beyond which
/// further batches are dropped from the capture: bounds the memory a slow
/// disk can make the capture hold.
pub const QUEUE_LIMIT_BYTES: usize = 32 * 1024 * 1024;

/// Most batches queued for the writer (a second bound besides the bytes).
const QUEUE_BATCHES: usize = 4096;

/// The pcap global header.
const FILE_HEADER_LEN: u64 = 24;

/// Which way a datagram went, seen from the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Sent,
    Received,
}

/// One datagram in a [`CaptureBatch`].
// Read by the pcap writer only, which a build without `capture` lacks.
#[cfg_attr(not(feature = "capture"), allow(dead_code))]
#[derive(Debug, Clone, Copy)]
struct Record {
    /// Since the Unix epoch.
    time: Duration,
    direction: Direction,
    src: SocketAddr,
    dst: SocketAddr,
    /// Where its bytes start in the batch's buffer.
    start: usize,
    len: usize,
}

/// Datagrams of one receive batch or send round, copied out of the
/// driver's buffers, on their way to the writer.
#[derive(Debug, Default)]
pub(crate) struct CaptureBatch {
    data: Vec<u8>,
    records: Vec<Record>,
}

impl CaptureBatch {
    /// Copies one datagram into the batch.
    pub(crate) fn push(
        &mut self,
        time: Duration,
        direction: Direction,
        src: SocketAddr,
        dst: SocketAddr,
        datagram: &[u8],
    ) {
        self.records.push(Record {
            time,
            direction,
            src,
            dst,
            start: self.data.len(),
            len: datagram.len(),
        });
        self.data.extend_from_slice(datagram);
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    #[cfg_attr(not(feature = "capture"), allow(dead_code))]
    fn datagram(&self, r: &Record) -> &[u8] {
        &self.data[r.start..r.start + r.len]
    }
}

/// The time to stamp a batch with: one clock read per batch, since the
/// datagrams of one `recvmmsg` (or one send round) share their moment.
pub(crate) fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// This end's address in one datagram: the socket's `local` address, with
/// the datagram's own IP (as the kernel reported or was told it) where
/// `local` is a wildcard.
pub(crate) fn local_address(local: SocketAddr, ip: Option<IpAddr>) -> SocketAddr {
    let mut to = local;
    if let Some(ip) = ip.filter(|_| local.ip().is_unspecified()) {
        to.set_ip(ip);
    }
    to
}

/// Why a capture could not be started.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// One capture at a time per endpoint: two files of the same traffic
    /// help nobody, and stopping the first returns its summary.
    #[error("a capture to {} is already running: stop it first", path.display())]
    AlreadyRunning {
        /// The running capture's file.
        path: PathBuf,
    },
    /// Captures never overwrite a file: the caller of the admin endpoint
    /// must not be able to clobber what the node's user can write.
    #[error("{} already exists: a capture never overwrites a file (remove it or choose another name)", path.display())]
    Exists {
        /// The file asked for.
        path: PathBuf,
    },
    /// The file could not be created (no such directory, no permission...).
    #[error("cannot create {}: {source}", path.display())]
    Create {
        /// The file asked for.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The limit cannot hold even the file header.
    #[error("max_bytes must be at least {MIN_MAX_BYTES} (the pcap file header), got {0}")]
    LimitTooSmall(u64),
    /// The writer thread could not be started.
    #[error("cannot start the capture writer: {0}")]
    Writer(io::Error),
    /// This build of the library has no pcap writer.
    #[error("this build has no packet capture (build mxp with its `capture` feature)")]
    Unsupported,
}

/// Where a capture is in its life, as `mxp admin ADDR capture status`
/// shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum CaptureState {
    /// No capture has run on this endpoint.
    Idle,
    /// Datagrams are being recorded.
    Recording,
    /// The file reached `max_bytes`; nothing more is recorded until the
    /// capture is stopped (and a new one started).
    LimitReached,
    /// Writing failed (disk full...): see `error`. Stop the capture to
    /// start another.
    Failed,
    /// The last capture was stopped; its summary follows.
    Stopped,
}

/// What a capture recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptureSummary {
    /// The file.
    pub path: PathBuf,
    /// The size limit of the file, header included.
    pub max_bytes: u64,
    /// Datagrams written to the file.
    pub packets: u64,
    /// Of those, sent by the endpoint.
    pub sent: u64,
    /// Of those, received by the endpoint.
    pub received: u64,
    /// Size of the file in bytes (what has been written, header included).
    pub bytes: u64,
    /// Datagrams left out of the file because the writer fell behind.
    pub dropped: u64,
    /// Recording stopped because the next datagram would have taken the
    /// file past `max_bytes`.
    pub truncated_by_limit: bool,
    /// The write error that ended the recording, if one did.
    pub error: Option<String>,
    /// Seconds from start to stop (or to now, while it runs).
    pub duration_s: f64,
}

/// The capture state of an endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptureStatus {
    /// Whether one runs, and whether it still records.
    pub state: CaptureState,
    /// The running capture, or the last one stopped.
    #[serde(flatten)]
    pub capture: Option<CaptureSummary>,
    /// Bytes written to capture files by this endpoint since it started,
    /// all captures together (a counter for monitoring).
    pub bytes_total: u64,
}

/// Counters of one capture: written by the writer thread (and by the
/// submitters, for drops), read by `status`.
#[derive(Debug, Default)]
struct Counters {
    packets: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    truncated: AtomicBool,
    /// Bytes of datagrams handed to the writer and not yet written.
    queued: AtomicU64,
    error: Mutex<Option<String>>,
}

impl Counters {
    fn summary(&self, path: &Path, max_bytes: u64, duration: Duration) -> CaptureSummary {
        CaptureSummary {
            path: path.to_owned(),
            max_bytes,
            packets: self.packets.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            truncated_by_limit: self.truncated.load(Ordering::Relaxed),
            error: lock(&self.error).clone(),
            duration_s: duration.as_secs_f64(),
        }
    }

    fn state(&self) -> CaptureState {
        if self.truncated.load(Ordering::Relaxed) {
            CaptureState::LimitReached
        } else if lock(&self.error).is_some() {
            CaptureState::Failed
        } else {
            CaptureState::Recording
        }
    }
}

/// The running capture.
#[derive(Debug)]
struct Session {
    path: PathBuf,
    max_bytes: u64,
    started: Instant,
    counters: Arc<Counters>,
    tx: SyncSender<CaptureBatch>,
    writer: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Whether datagrams should be handed over: all the packet path reads
    /// while no capture runs.
    recording: AtomicBool,
    session: Mutex<Option<Session>>,
    /// Serialises start and stop, so a stopping capture's writer has ended
    /// before the next capture starts (and cannot clear `recording` under
    /// it). Never taken by the packet path.
    control: Mutex<()>,
    /// The last capture stopped.
    last: Mutex<Option<CaptureSummary>>,
    bytes_total: Arc<AtomicU64>,
}

/// The packet capture of one endpoint: at most one capture file at a time.
///
/// Clones share it. Dropping the last clone while a capture runs finishes
/// the file in the background, as [`stop`](Self::stop) would.
#[derive(Debug, Clone, Default)]
pub struct Capture(Arc<Inner>);

impl Capture {
    /// A capture that records nothing until started.
    pub fn new() -> Capture {
        Capture::default()
    }

    /// Starts recording into a new file at `path`, of at most `max_bytes`
    /// bytes ([`DEFAULT_MAX_BYTES`] is a sensible default). Refuses to
    /// overwrite a file, and refuses while another capture runs, even one
    /// that stopped recording at its limit: stopping that one returns its
    /// summary, which a silent replacement would lose.
    pub fn start(&self, path: impl AsRef<Path>, max_bytes: u64) -> Result<(), CaptureError> {
        let path = path.as_ref().to_owned();
        if max_bytes < MIN_MAX_BYTES {
            return Err(CaptureError::LimitTooSmall(max_bytes));
        }
        let _control = lock(&self.0.control);
        if let Some(running) = lock(&self.0.session).as_ref() {
            return Err(CaptureError::AlreadyRunning {
                path: running.path.clone(),
            });
        }
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::sync_channel(QUEUE_BATCHES);
        let writer = file::spawn(&path, rx, counters.clone(), &self.0, max_bytes)?;
        info!(path = %path.display(), max_bytes, "packet capture started");
        *lock(&self.0.session) = Some(Session {
            path,
            max_bytes,
            started: Instant::now(),
            counters,
            tx,
            writer,
        });
        self.0.recording.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Stops the running capture, waits until everything handed to the
    /// writer is in the file, and returns what it recorded; `None` if none
    /// was running. It blocks while the writer finishes (at most
    /// [`QUEUE_LIMIT_BYTES`] to write), so async code should call it where
    /// blocking is allowed (`spawn_blocking`).
    pub fn stop(&self) -> Option<CaptureSummary> {
        let _control = lock(&self.0.control);
        let session = {
            let mut slot = lock(&self.0.session);
            self.0.recording.store(false, Ordering::Relaxed);
            slot.take()?
        };
        let duration = session.started.elapsed();
        // Without a sender, the writer writes what is queued, flushes and
        // ends.
        drop(session.tx);
        if session.writer.join().is_err() {
            warn!(path = %session.path.display(), "the capture writer panicked");
        }
        let summary = session
            .counters
            .summary(&session.path, session.max_bytes, duration);
        info!(
            path = %summary.path.display(),
            packets = summary.packets,
            bytes = summary.bytes,
            dropped = summary.dropped,
            truncated_by_limit = summary.truncated_by_limit,
            "packet capture stopped"
        );
        *lock(&self.0.last) = Some(summary.clone());
        Some(summary)
    }

    /// The running capture (or else the last one stopped), with live
    /// counters.
    pub fn status(&self) -> CaptureStatus {
        let bytes_total = self.0.bytes_total.load(Ordering::Relaxed);
        if let Some(s) = lock(&self.0.session).as_ref() {
            return CaptureStatus {
                state: s.counters.state(),
                capture: Some(
                    s.counters
                        .summary(&s.path, s.max_bytes, s.started.elapsed()),
                ),
                bytes_total,
            };
        }
        let last = lock(&self.0.last).clone();
        CaptureStatus {
            state: match last {
                Some(_) => CaptureState::Stopped,
                None => CaptureState::Idle,
            },
            capture: last,
            bytes_total,
        }
    }

    /// Whether datagrams should be handed over now: one relaxed load, the
    /// whole cost of capture support on the packet path while none runs.
    #[inline]
    pub(crate) fn is_recording(&self) -> bool {
        self.0.recording.load(Ordering::Relaxed)
    }

    /// Hands a batch to the writer without blocking, leaving `batch` empty
    /// (with room for one like it). Dropped and counted if the writer is
    /// too far behind; discarded if the capture stopped meanwhile.
    pub(crate) fn submit(&self, batch: &mut CaptureBatch) {
        if batch.is_empty() {
            return;
        }
        let full = std::mem::replace(
            batch,
            CaptureBatch {
                data: Vec::with_capacity(batch.data.len()),
                records: Vec::with_capacity(batch.records.len()),
            },
        );
        let session = lock(&self.0.session);
        let Some(s) = session.as_ref() else {
            return;
        };
        let c = &s.counters;
        let bytes = full.data.len() as u64;
        let count = full.records.len() as u64;
        if c.queued.fetch_add(bytes, Ordering::Relaxed) + bytes > QUEUE_LIMIT_BYTES as u64 {
            c.queued.fetch_sub(bytes, Ordering::Relaxed);
            c.dropped.fetch_add(count, Ordering::Relaxed);
            return;
        }
        match s.tx.try_send(full) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                c.queued.fetch_sub(bytes, Ordering::Relaxed);
                c.dropped.fetch_add(count, Ordering::Relaxed);
            }
            // The writer ended (limit or error): nothing is recorded now.
            Err(TrySendError::Disconnected(_)) => {
                c.queued.fetch_sub(bytes, Ordering::Relaxed);
            }
        }
    }
}
