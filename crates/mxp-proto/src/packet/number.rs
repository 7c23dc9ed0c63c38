//! Packet-number truncation on the wire and expansion on receipt
//! (the algorithm of RFC 9000 §17.1 and Appendix A).
//!
//! Packet numbers are 62-bit and never repeat in a direction, which is what
//! makes them usable as AEAD nonces. Only the low 1–4 bytes travel.

/// Largest packet number.
pub const MAX_PN: u64 = (1 << 62) - 1;

/// Bytes needed to send `pn` so a peer that has acknowledged
/// `largest_acked` decodes it unambiguously.
pub fn encoded_len(pn: u64, largest_acked: Option<u64>) -> usize {
    let in_flight = match largest_acked {
        Some(acked) => pn.saturating_sub(acked),
        None => pn.saturating_add(1),
    };
    // Twice the distance, so the window centred on the expected number
    // still contains `pn`.
    let range = u128::from(in_flight) * 2;
    if range < 1 << 8 {
        1
    } else if range < 1 << 16 {
        2
    } else if range < 1 << 24 {
        3
    } else {
        4
    }
}

/// Writes the low `len` bytes of `pn`, big-endian.
pub fn write(pn: u64, len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&pn.to_be_bytes()[8 - len..]);
}

/// Reconstructs a full packet number from its low `len` bytes, choosing the
/// candidate closest to the next expected number.
pub fn decode(truncated: u64, len: usize, largest_received: Option<u64>) -> u64 {
    let expected = largest_received.map_or(0, |l| l + 1);
    let win = 1u64 << (len * 8);
    let half = win / 2;
    let mask = win - 1;
    let candidate = (expected & !mask) | truncated;
    if candidate + half <= expected && candidate < (1 << 62) - win {
        candidate + win
    } else if candidate > expected + half && candidate >= win {
        candidate - win
    } else {
        candidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_9000_appendix_a_example() {
        // Largest received 0xa82f30ea, 2-byte truncated 0x9b32 → 0xa82f9b32.
        assert_eq!(decode(0x9b32, 2, Some(0xa82f_30ea)), 0xa82f_9b32);
    }

    #[test]
    fn lengths_grow_with_unacknowledged_distance() {
        assert_eq!(encoded_len(0, None), 1);
        assert_eq!(encoded_len(200, Some(100)), 1);
        assert_eq!(encoded_len(300, Some(100)), 2);
        assert_eq!(encoded_len(1 << 20, Some(0)), 3);
        assert_eq!(encoded_len(1 << 30, Some(0)), 4);
    }

    proptest! {
        #[test]
        fn decode_inverts_truncation(largest in 0u64..(1 << 40), ahead in 1u64..(1 << 20)) {
            let pn = largest + ahead;
            let len = encoded_len(pn, Some(largest));
            let truncated = pn & ((1u64 << (len * 8)) - 1);
            // The receiver has seen at least up to `largest`.
            prop_assert_eq!(decode(truncated, len, Some(largest)), pn);
        }

        #[test]
        fn decode_of_any_input_stays_in_range(t in any::<u32>(), len in 1usize..=4, l in proptest::option::of(0..MAX_PN)) {
            let t = u64::from(t) & ((1u64 << (len * 8)) - 1);
            prop_assert!(decode(t, len, l) <= MAX_PN);
        }
    }
}
