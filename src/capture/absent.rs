//! The capture file in a build without the `capture` feature: no pcap
//! writer, so starting a capture is refused with a reason.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;

use super::{CaptureBatch, CaptureError, Counters, Inner};

pub(super) fn spawn(
    _path: &Path,
    _rx: Receiver<CaptureBatch>,
    _counters: Arc<Counters>,
    _capture: &Arc<Inner>,
    _max_bytes: u64,
) -> Result<JoinHandle<()>, CaptureError> {
    Err(CaptureError::Unsupported)
}
