//! MXP messages the codec refused on a stream (a peer that speaks MXP
//! badly, or corruption above the transport), by kind: relaxed atomics
//! bumped by the stream that read them.

use std::sync::atomic::{AtomicU64, Ordering};

use mxp_proto::message::MessageError;

/// Refused messages of an endpoint, one count per [`MessageError::KINDS`].
#[derive(Debug, Default)]
pub(crate) struct MessageErrors {
    by_kind: [AtomicU64; MessageError::KINDS.len()],
}

impl MessageErrors {
    /// Counts one refusal of `kind`, one of [`MessageError::KINDS`].
    pub(crate) fn count(&self, kind: &'static str) {
        if let Some(i) = MessageError::KINDS.iter().position(|k| *k == kind) {
            self.by_kind[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(kind, count)` for every kind, zeros included.
    pub(crate) fn load(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        MessageError::KINDS
            .into_iter()
            .zip(&self.by_kind)
            .map(|(k, n)| (k, n.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_counted_apart() {
        let errors = MessageErrors::default();
        errors.count(MessageError::BadMagic(7).kind());
        errors.count(MessageError::BadMagic(8).kind());
        errors.count(MessageError::UnknownType(0x42).kind());
        let counts: Vec<_> = errors.load().collect();
        assert_eq!(counts.len(), MessageError::KINDS.len());
        assert!(counts.contains(&("bad_magic", 2)));
        assert!(counts.contains(&("unknown_type", 1)));
        assert!(counts.contains(&("checksum_mismatch", 0)));
    }
}
