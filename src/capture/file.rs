//! The capture file: a writer thread that turns batches into pcap records
//! (synthesized IP and UDP headers, checksums computed) under the size
//! limit. Built with the `capture` feature, which brings pcap-file.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};
use tracing::{info, warn};

use super::{CaptureBatch, CaptureError, Counters, Direction, FILE_HEADER_LEN, Inner};
use crate::lock;

/// The pcap per-record header (timestamp, captured and original length).
const RECORD_HEADER_LEN: u64 = 16;
const IPV4_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
/// Larger than any UDP datagram plus its headers, as tcpdump uses: no
/// record is ever cut short.
const SNAPLEN: u32 = 262_144;
/// The writer's buffer: large writes under load.
const WRITE_BUFFER: usize = 64 * 1024;

/// Creates the file at `path` and starts the writer thread that fills it
/// from `rx`.
pub(super) fn spawn(
    path: &Path,
    rx: Receiver<CaptureBatch>,
    counters: Arc<Counters>,
    capture: &Arc<Inner>,
    max_bytes: u64,
) -> Result<JoinHandle<()>, CaptureError> {
    let file = create_new(path)?;
    // The writer's first act; counted now so the status says so at once.
    counters.bytes.store(FILE_HEADER_LEN, Ordering::Relaxed);
    capture
        .bytes_total
        .fetch_add(FILE_HEADER_LEN, Ordering::Relaxed);
    let job = WriterJob {
        file,
        rx,
        counters,
        capture: Arc::downgrade(capture),
        bytes_total: capture.bytes_total.clone(),
        max_bytes,
    };
    std::thread::Builder::new()
        .name("mxp-capture".into())
        .spawn(move || job.run())
        .map_err(|e| {
            let _ = std::fs::remove_file(path);
            CaptureError::Writer(e)
        })
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
    use super::super::*;
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
