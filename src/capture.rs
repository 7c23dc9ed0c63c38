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

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};
use serde::Serialize;
use thiserror::Error;
use tracing::{info, warn};

use crate::lock;

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
/// The pcap per-record header (timestamp, captured and original length).
const RECORD_HEADER_LEN: u64 = 16;
const IPV4_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
/// Larger than any UDP datagram plus its headers, as tcpdump uses: no
/// record is ever cut short.
const SNAPLEN: u32 = 262_144;
/// The writer's buffer: large writes under load.
const WRITE_BUFFER: usize = 64 * 1024;

/// Which way a datagram went, seen from the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Sent,
    Received,
}

/// One datagram in a [`CaptureBatch`].
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
    pub fn push(
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
}

/// Where a capture is in its life, as `mxp admin ADDR capture status`
/// shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
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
        let file = create_new(&path)?;
        let counters = Arc::new(Counters::default());
        // The writer's first act; counted now so the status says so at once.
        counters.bytes.store(FILE_HEADER_LEN, Ordering::Relaxed);
        self.0
            .bytes_total
            .fetch_add(FILE_HEADER_LEN, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(QUEUE_BATCHES);
        let job = WriterJob {
            file,
            rx,
            counters: counters.clone(),
            capture: Arc::downgrade(&self.0),
            bytes_total: self.0.bytes_total.clone(),
            max_bytes,
        };
        let writer = std::thread::Builder::new()
            .name("mxp-capture".into())
            .spawn(move || job.run())
            .map_err(|e| {
                let _ = std::fs::remove_file(&path);
                CaptureError::Writer(e)
            })?;
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

/// Creates `path`, refusing an existing file; readable by the node's user
/// only where the platform allows (traffic metadata is not for everyone).
fn create_new(path: &Path) -> Result<File, CaptureError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            CaptureError::Exists {
                path: path.to_owned(),
            }
        } else {
            CaptureError::Create {
                path: path.to_owned(),
                source,
            }
        }
    })
}

/// The buffered file under the pcap writer, shared with the writer thread
/// so that it can flush: `PcapWriter` gives no access to what it wraps.
#[derive(Clone)]
struct Sink(Rc<RefCell<BufWriter<File>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.borrow_mut().write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

fn pcap_header() -> PcapHeader {
    PcapHeader {
        version_major: 2,
        version_minor: 4,
        ts_correction: 0,
        ts_accuracy: 0,
        snaplen: SNAPLEN,
        datalink: DataLink::RAW,
        ts_resolution: TsResolution::NanoSecond,
        endianness: Endianness::native(),
    }
}

fn pcap_error(e: pcap_file::PcapError) -> io::Error {
    match e {
        pcap_file::PcapError::IoError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// What the writer thread owns.
struct WriterJob {
    file: File,
    rx: Receiver<CaptureBatch>,
    counters: Arc<Counters>,
    capture: Weak<Inner>,
    bytes_total: Arc<AtomicU64>,
    max_bytes: u64,
}

impl WriterJob {
    fn run(self) {
        let mut sink = Sink(Rc::new(RefCell::new(BufWriter::with_capacity(
            WRITE_BUFFER,
            self.file,
        ))));
        let outcome = write_all(
            &self.rx,
            &mut sink,
            &self.counters,
            &self.bytes_total,
            self.max_bytes,
        );
        let outcome = outcome.and_then(|()| sink.flush());
        let ended_early = match outcome {
            Ok(()) => self.counters.truncated.load(Ordering::Relaxed),
            Err(e) => {
                warn!(error = %e, "packet capture: writing failed, recording stopped");
                *lock(&self.counters.error) = Some(e.to_string());
                true
            }
        };
        if ended_early {
            if let Some(inner) = self.capture.upgrade() {
                inner.recording.store(false, Ordering::Relaxed);
            }
        }
    }
}

/// Writes batches as they come until the capture is stopped (the channel
/// closes), the limit is reached, or a write fails. Flushes whenever
/// nothing is queued.
fn write_all(
    rx: &Receiver<CaptureBatch>,
    sink: &mut Sink,
    counters: &Counters,
    bytes_total: &AtomicU64,
    max_bytes: u64,
) -> io::Result<()> {
    let mut pcap = PcapWriter::with_header(sink.clone(), pcap_header()).map_err(pcap_error)?;
    let mut bytes = FILE_HEADER_LEN;
    let mut packet = Vec::new();
    let mut ident = 0u16;
    let mut next = rx.recv().ok();
    while let Some(batch) = next {
        counters
            .queued
            .fetch_sub(batch.data.len() as u64, Ordering::Relaxed);
        for r in &batch.records {
            packet.clear();
            encode(&mut packet, r.src, r.dst, ident, batch.datagram(r));
            ident = ident.wrapping_add(1);
            let record = RECORD_HEADER_LEN + packet.len() as u64;
            if bytes + record > max_bytes {
                counters.truncated.store(true, Ordering::Relaxed);
                info!(
                    max_bytes,
                    "packet capture reached its size limit: recording stopped"
                );
                return Ok(());
            }
            let len = u32::try_from(packet.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
            pcap.write_packet(&PcapPacket::new(r.time, len, &packet))
                .map_err(pcap_error)?;
            bytes += record;
            counters.bytes.store(bytes, Ordering::Relaxed);
            counters.packets.fetch_add(1, Ordering::Relaxed);
            match r.direction {
                Direction::Sent => &counters.sent,
                Direction::Received => &counters.received,
            }
            .fetch_add(1, Ordering::Relaxed);
            bytes_total.fetch_add(record, Ordering::Relaxed);
        }
        next = match rx.try_recv() {
            Ok(b) => Some(b),
            Err(TryRecvError::Empty) => {
                sink.flush()?;
                rx.recv().ok()
            }
            Err(TryRecvError::Disconnected) => None,
        };
    }
    Ok(())
}

// ---- headers ---------------------------------------------------------------

/// The addresses as one IP family: IPv4 when both are IPv4 (or IPv4-mapped,
/// as a dual-stack socket reports them, or the unspecified address of a
/// socket bound to all interfaces), else IPv6.
fn ip_pair(src: IpAddr, dst: IpAddr) -> (IpAddr, IpAddr) {
    fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
        match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(a) if a.is_unspecified() => Some(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(a) => a.to_ipv4_mapped(),
        }
    }
    fn v6(ip: IpAddr) -> Ipv6Addr {
        match ip {
            IpAddr::V4(a) => a.to_ipv6_mapped(),
            IpAddr::V6(a) => a,
        }
    }
    match (v4(src), v4(dst)) {
        (Some(s), Some(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
        _ => (IpAddr::V6(v6(src)), IpAddr::V6(v6(dst))),
    }
}

/// Sum of big-endian 16-bit words (an odd last byte padded with zero), for
/// the Internet checksum.
fn sum_words(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    let mut sum: u64 = chunks
        .by_ref()
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// The one's-complement of the folded sum: the Internet checksum.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Appends an IP header, a UDP header and `payload` for a datagram from
/// `src` to `dst`.
fn encode(out: &mut Vec<u8>, src: SocketAddr, dst: SocketAddr, ident: u16, payload: &[u8]) {
    const UDP: u8 = 17;
    const TTL: u8 = 64;
    let udp_len = UDP_HEADER_LEN + payload.len();
    // Lengths beyond the fields' range cannot come from a real socket;
    // saturate rather than wrap.
    let udp_len16 = u16::try_from(udp_len).unwrap_or(u16::MAX);
    let pseudo = match ip_pair(src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = u16::try_from(IPV4_HEADER_LEN + udp_len).unwrap_or(u16::MAX);
            let start = out.len();
            out.extend_from_slice(&[0x45, 0]);
            out.extend_from_slice(&total.to_be_bytes());
            out.extend_from_slice(&ident.to_be_bytes());
            // Don't fragment (as the transport asks of its sockets).
            out.extend_from_slice(&[0x40, 0, TTL, UDP, 0, 0]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
            let checksum = fold(sum_words(&out[start..]));
            out[start + 10..start + 12].copy_from_slice(&checksum.to_be_bytes());
            sum_words(&s.octets()) + sum_words(&d.octets()) + u64::from(UDP) + udp_len as u64
        }
        (s, d) => {
            let (s, d) = (v6_octets(s), v6_octets(d));
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&udp_len16.to_be_bytes());
            out.extend_from_slice(&[UDP, TTL]);
            out.extend_from_slice(&s);
            out.extend_from_slice(&d);
            sum_words(&s) + sum_words(&d) + u64::from(UDP) + udp_len as u64
        }
    };
    let mut udp = [0u8; UDP_HEADER_LEN];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len16.to_be_bytes());
    let checksum = match fold(pseudo + sum_words(&udp) + sum_words(payload)) {
        // Zero means "no checksum" in UDP; its complement is sent instead.
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&checksum.to_be_bytes());
    out.extend_from_slice(&udp);
    out.extend_from_slice(payload);
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcap::PcapReader;

    /// A fresh path under the temp dir, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str) -> TempFile {
            let path = std::env::temp_dir().join(format!(
                "mxp-capture-unit-{}-{name}.pcap",
                std::process::id()
            ));
            let _ = std::fs::remove_file(&path);
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Records `datagrams` through the same path the driver uses, stops and
    /// returns the summary.
    fn record(capture: &Capture, datagrams: &[(Direction, &str, &str, Vec<u8>)]) -> CaptureSummary {
        let mut batch = CaptureBatch::default();
        for (i, (dir, src, dst, data)) in datagrams.iter().enumerate() {
            let time = Duration::new(1_700_000_000, i as u32 * 1000 + 7);
            batch.push(time, *dir, addr(src), addr(dst), data);
        }
        capture.submit(&mut batch);
        capture.stop().expect("a capture was running")
    }

    fn read(path: &Path) -> (PcapHeader, Vec<(Duration, Vec<u8>)>) {
        let mut reader = PcapReader::new(File::open(path).unwrap()).unwrap();
        let header = reader.header();
        let mut packets = Vec::new();
        while let Some(p) = reader.next_packet() {
            let p = p.unwrap();
            assert_eq!(p.orig_len as usize, p.data.len());
            packets.push((p.timestamp, p.data.into_owned()));
        }
        (header, packets)
    }

    /// Parses a synthesized packet: (src, dst, payload), checking every
    /// length and checksum on the way.
    fn parse(packet: &[u8]) -> (SocketAddr, SocketAddr, &[u8]) {
        let (src_ip, dst_ip, udp, pseudo): (IpAddr, IpAddr, &[u8], u64) = match packet[0] >> 4 {
            4 => {
                assert_eq!(packet[0], 0x45, "IPv4 without options");
                let header = &packet[..20];
                assert_eq!(fold(sum_words(header)), 0, "IPv4 header checksum");
                let total = u16::from_be_bytes([packet[2], packet[3]]) as usize;
                assert_eq!(total, packet.len());
                assert_eq!(packet[9], 17, "UDP");
                let s: [u8; 4] = packet[12..16].try_into().unwrap();
                let d: [u8; 4] = packet[16..20].try_into().unwrap();
                let pseudo = sum_words(&s) + sum_words(&d) + 17 + (total - 20) as u64;
                (s.into(), d.into(), &packet[20..], pseudo)
            }
            6 => {
                let len = u16::from_be_bytes([packet[4], packet[5]]) as usize;
                assert_eq!(len + 40, packet.len());
                assert_eq!(packet[6], 17, "UDP");
                let s: [u8; 16] = packet[8..24].try_into().unwrap();
                let d: [u8; 16] = packet[24..40].try_into().unwrap();
                let pseudo = sum_words(&s) + sum_words(&d) + 17 + len as u64;
                (s.into(), d.into(), &packet[40..], pseudo)
            }
            v => panic!("IP version {v}"),
        };
        assert_eq!(u16::from_be_bytes([udp[4], udp[5]]) as usize, udp.len());
        assert_ne!(u16::from_be_bytes([udp[6], udp[7]]), 0, "UDP checksum set");
        assert_eq!(fold(pseudo + sum_words(udp)), 0, "UDP checksum");
        let sport = u16::from_be_bytes([udp[0], udp[1]]);
        let dport = u16::from_be_bytes([udp[2], udp[3]]);
        (
            SocketAddr::new(src_ip, sport),
            SocketAddr::new(dst_ip, dport),
            &udp[8..],
        )
    }

    #[test]
    fn headers_parse_back_with_addresses_ports_checksums_and_times() {
        let file = TempFile::new("headers");
        let capture = Capture::new();
        capture.start(&file.0, DEFAULT_MAX_BYTES).unwrap();
        assert!(capture.is_recording());
        let odd: Vec<u8> = (0..1201u32).map(|i| (i * 7) as u8).collect();
        let datagrams = vec![
            (
                Direction::Sent,
                "127.0.0.1:9000",
                "10.1.2.3:50000",
                b"hello".to_vec(),
            ),
            (
                Direction::Received,
                "10.1.2.3:50000",
                "127.0.0.1:9000",
                odd.clone(),
            ),
            (
                Direction::Received,
                "[2001:db8::1]:4433",
                "[::1]:9000",
                vec![0xff; 64],
            ),
            // A dual-stack socket: an IPv4-mapped peer on a wildcard.
            (
                Direction::Sent,
                "[::]:9000",
                "[::ffff:192.0.2.7]:1234",
                vec![],
            ),
        ];
        let summary = record(&capture, &datagrams);
        assert_eq!((summary.packets, summary.sent, summary.received), (4, 2, 2));
        assert_eq!((summary.dropped, summary.truncated_by_limit), (0, false));
        assert_eq!(summary.error, None);
        assert_eq!(
            summary.bytes,
            std::fs::metadata(&file.0).unwrap().len(),
            "bytes is the file size"
        );

        let (header, packets) = read(&file.0);
        assert_eq!(header.datalink, DataLink::RAW);
        assert_eq!(header.ts_resolution, TsResolution::NanoSecond);
        assert_eq!(packets.len(), 4);
        let expected = [
            ("127.0.0.1:9000", "10.1.2.3:50000"),
            ("10.1.2.3:50000", "127.0.0.1:9000"),
            ("[2001:db8::1]:4433", "[::1]:9000"),
            ("0.0.0.0:9000", "192.0.2.7:1234"),
        ];
        for (i, ((time, packet), (src, dst))) in packets.iter().zip(expected).enumerate() {
            assert_eq!(*time, Duration::new(1_700_000_000, i as u32 * 1000 + 7));
            let (s, d, payload) = parse(packet);
            assert_eq!((s, d), (addr(src), addr(dst)), "packet {i}");
            assert_eq!(payload, &datagrams[i].3[..], "packet {i}");
        }
        let status = capture.status();
        assert_eq!(status.state, CaptureState::Stopped);
        assert_eq!(status.capture, Some(summary.clone()));
        assert_eq!(status.bytes_total, summary.bytes);
    }

    #[test]
    fn the_size_limit_is_honoured_to_the_byte() {
        // Each record: 16 (pcap) + 20 (IPv4) + 8 (UDP) + payload.
        let size_of = |payload: u64| 16 + 28 + payload;
        let datagrams: Vec<_> = [100usize, 100, 50, 10]
            .iter()
            .map(|&n| (Direction::Sent, "127.0.0.1:1", "127.0.0.1:2", vec![1; n]))
            .collect();
        let exact_two = FILE_HEADER_LEN + 2 * size_of(100);
        for (budget, packets) in [
            (FILE_HEADER_LEN, 0),
            (FILE_HEADER_LEN + size_of(100) - 1, 0),
            (exact_two, 2),
            // Room for the 10-byte datagram but not the 50 before it: the
            // file stays a prefix of the traffic, without gaps.
            (exact_two + size_of(50) - 1, 2),
            (exact_two + size_of(50), 3),
        ] {
            let file = TempFile::new(&format!("limit-{budget}"));
            let capture = Capture::new();
            capture.start(&file.0, budget).unwrap();
            let s = record(&capture, &datagrams);
            let size = std::fs::metadata(&file.0).unwrap().len();
            assert!(size <= budget, "{size} > {budget}");
            assert_eq!(s.bytes, size);
            assert_eq!(s.packets, packets, "budget {budget}");
            assert!(s.truncated_by_limit, "budget {budget}");
            assert_eq!(read(&file.0).1.len() as u64, packets);
        }
        // Everything fits: not truncated.
        let file = TempFile::new("limit-all");
        let capture = Capture::new();
        let all = FILE_HEADER_LEN + 2 * size_of(100) + size_of(50) + size_of(10);
        capture.start(&file.0, all).unwrap();
        let s = record(&capture, &datagrams);
        assert_eq!((s.packets, s.bytes, s.truncated_by_limit), (4, all, false));

        let e = Capture::new()
            .start(&file.0, MIN_MAX_BYTES - 1)
            .unwrap_err();
        assert!(matches!(e, CaptureError::LimitTooSmall(23)), "{e}");
    }

    #[test]
    fn reaching_the_limit_stops_recording_and_says_so() {
        let file = TempFile::new("limit-status");
        let capture = Capture::new();
        capture.start(&file.0, 100).unwrap();
        let mut batch = CaptureBatch::default();
        let a = addr("127.0.0.1:1");
        batch.push(now(), Direction::Received, a, a, &[0; 200]);
        capture.submit(&mut batch);
        // The writer clears the flag; wait for it (a hang guard, no timing).
        let deadline = Instant::now() + Duration::from_secs(30);
        while capture.is_recording() {
            assert!(Instant::now() < deadline, "the writer never saw the limit");
            std::thread::sleep(Duration::from_millis(1));
        }
        let status = capture.status();
        assert_eq!(status.state, CaptureState::LimitReached);
        assert!(status.capture.unwrap().truncated_by_limit);
        // Still running until stopped: a new one is refused, naming it.
        let other = TempFile::new("limit-status-2");
        let e = capture.start(&other.0, 1000).unwrap_err();
        assert!(matches!(e, CaptureError::AlreadyRunning { .. }), "{e}");
        assert!(e.to_string().contains(&*file.0.to_string_lossy()), "{e}");
        assert!(capture.stop().unwrap().truncated_by_limit);
        assert_eq!(capture.stop(), None);
    }

    #[test]
    fn start_refuses_existing_files_and_names_unwritable_paths() {
        let file = TempFile::new("exists");
        std::fs::write(&file.0, b"precious").unwrap();
        let capture = Capture::new();
        let e = capture.start(&file.0, DEFAULT_MAX_BYTES).unwrap_err();
        assert!(matches!(e, CaptureError::Exists { .. }), "{e}");
        assert_eq!(std::fs::read(&file.0).unwrap(), b"precious");
        let missing = std::env::temp_dir().join("mxp-no-such-dir-for-capture/x.pcap");
        let e = capture.start(&missing, DEFAULT_MAX_BYTES).unwrap_err();
        assert!(matches!(e, CaptureError::Create { .. }), "{e}");
        assert!(e.to_string().contains("mxp-no-such-dir-for-capture/x.pcap"));
        assert_eq!(capture.status().state, CaptureState::Idle);
        assert!(!capture.is_recording());
    }

    #[test]
    fn a_writer_far_behind_drops_batches_and_counts_them() {
        let file = TempFile::new("drops");
        let capture = Capture::new();
        capture.start(&file.0, DEFAULT_MAX_BYTES).unwrap();
        let session = lock(&capture.0.session);
        let counters = session.as_ref().unwrap().counters.clone();
        drop(session);
        // As if the writer had that much queued already.
        counters
            .queued
            .fetch_add(QUEUE_LIMIT_BYTES as u64, Ordering::Relaxed);
        let mut batch = CaptureBatch::default();
        let a = addr("127.0.0.1:1");
        for _ in 0..3 {
            batch.push(now(), Direction::Sent, a, a, b"x");
        }
        capture.submit(&mut batch);
        assert!(batch.is_empty());
        counters
            .queued
            .fetch_sub(QUEUE_LIMIT_BYTES as u64, Ordering::Relaxed);
        let s = capture.stop().unwrap();
        assert_eq!((s.packets, s.dropped), (0, 3));
    }

    #[test]
    fn checksums_match_known_values() {
        // RFC 1071's example words sum to ddf2; the checksum is its
        // complement.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_words(&data)), !0xddf2);
        // An odd length pads with a zero byte.
        assert_eq!(sum_words(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }
}
