//! Short-packet protection: AEAD over the frames with the header as
//! associated data, then header protection over the packet number and the
//! flag bits (RFC 9001 §5.3–5.4 in shape).

use super::{
    CID_LEN, ConnectionId, FIXED_BIT, KEY_PHASE_BIT, MIN_SHORT_LEN, PN_LEN_MASK, PROTECTED_BITS,
    PacketError, SHORT_PN_OFFSET, SHORT_RESERVED, number,
};
use crate::crypto::{HeaderKey, PacketKey, SAMPLE_LEN, TAG_LEN};

/// Writes an unprotected short header; frames follow it in `out`, then
/// [`seal_short`] protects the whole packet. Returns the header length.
pub fn write_short_header(
    dcid: ConnectionId,
    pn: u64,
    pn_len: usize,
    key_phase: bool,
    out: &mut Vec<u8>,
) -> usize {
    debug_assert!((1..=4).contains(&pn_len));
    let phase = if key_phase { KEY_PHASE_BIT } else { 0 };
    out.push(FIXED_BIT | phase | (pn_len as u8 - 1));
    out.extend_from_slice(&dcid.0);
    number::write(pn, pn_len, out);
    SHORT_PN_OFFSET + pn_len
}

/// Frames needed after a header with this packet-number length so the
/// header-protection sample fits.
pub fn min_payload_len(pn_len: usize) -> usize {
    4 - pn_len
}

/// Protects the packet that starts at `start` in `buf` (header written by
/// [`write_short_header`], frames after it): pads too-short payloads with
/// PADDING, encrypts, appends the tag, masks the header.
pub fn seal_short(buf: &mut Vec<u8>, start: usize, pn: u64, key: &PacketKey, hp: &HeaderKey) {
    let pn_len = usize::from(buf[start] & PN_LEN_MASK) + 1;
    let header_len = SHORT_PN_OFFSET + pn_len;
    let min_end = start + header_len + min_payload_len(pn_len);
    if buf.len() < min_end {
        buf.resize(min_end, 0); // PADDING frames are zero bytes.
    }
    let (header, payload) = buf[start..].split_at_mut(header_len);
    let tag = key.seal(pn, header, payload);
    buf.extend_from_slice(&tag);
    let packet = &mut buf[start..];
    let mask = hp.mask(sample(packet));
    apply_mask(packet, &mask, pn_len);
}

fn sample(packet: &[u8]) -> &[u8; SAMPLE_LEN] {
    let at = SHORT_PN_OFFSET + 4;
    packet[at..at + SAMPLE_LEN]
        .try_into()
        .expect("length checked against MIN_SHORT_LEN")
}

fn apply_mask(packet: &mut [u8], mask: &[u8; 5], pn_len: usize) {
    packet[0] ^= mask[0] & PROTECTED_BITS;
    for (b, m) in packet[SHORT_PN_OFFSET..SHORT_PN_OFFSET + pn_len]
        .iter_mut()
        .zip(&mask[1..])
    {
        *b ^= m;
    }
}

/// What header-protection removal revealed about a short packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenedPacket {
    /// Full packet number.
    pub pn: u64,
    /// Key-phase bit.
    pub key_phase: bool,
    /// Bytes of header (authenticated as AEAD associated data).
    pub header_len: usize,
}

/// Removes header protection in place and recovers the full packet number.
/// The payload is still encrypted: the caller checks the replay window,
/// picks the key for `key_phase` and opens it with [`open_payload`].
pub fn open_short(
    datagram: &mut [u8],
    largest_received: Option<u64>,
    hp: &HeaderKey,
) -> Result<OpenedPacket, PacketError> {
    if datagram.len() < MIN_SHORT_LEN {
        return Err(PacketError::Truncated);
    }
    let mask = hp.mask(sample(datagram));
    let pn_len = usize::from((datagram[0] ^ mask[0]) & PN_LEN_MASK) + 1;
    if datagram.len() < SHORT_PN_OFFSET + pn_len + TAG_LEN {
        return Err(PacketError::Truncated);
    }
    apply_mask(datagram, &mask, pn_len);
    let mut truncated = 0u64;
    for &b in &datagram[SHORT_PN_OFFSET..SHORT_PN_OFFSET + pn_len] {
        truncated = (truncated << 8) | u64::from(b);
    }
    Ok(OpenedPacket {
        pn: number::decode(truncated, pn_len, largest_received),
        key_phase: datagram[0] & KEY_PHASE_BIT != 0,
        header_len: SHORT_PN_OFFSET + pn_len,
    })
}

/// Authenticates and decrypts the payload of a packet whose header
/// protection [`open_short`] removed. Returns the plaintext frames' range
/// within `datagram`.
pub fn open_payload(
    datagram: &mut [u8],
    opened: &OpenedPacket,
    key: &PacketKey,
) -> Result<std::ops::Range<usize>, PacketError> {
    let (header, payload) = datagram.split_at_mut(opened.header_len);
    let len = key
        .open(opened.pn, header, payload)
        .map_err(|_| PacketError::Decrypt)?;
    // Checked only once authenticated, so the reserved bits cannot be used
    // as an oracle on the header-protection key.
    if header[0] & SHORT_RESERVED != 0 {
        return Err(PacketError::ReservedBits);
    }
    Ok(opened.header_len..opened.header_len + len)
}

/// The destination id of a short packet (bytes 1..9), for routing.
pub fn short_dcid(datagram: &[u8]) -> Option<ConnectionId> {
    datagram
        .get(1..1 + CID_LEN)
        .and_then(|b| b.try_into().ok())
        .map(ConnectionId)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Secret;

    fn keys() -> (PacketKey, HeaderKey) {
        let s = Secret::new([7; 32]);
        (s.packet_key(), s.header_key())
    }

    fn build(pn: u64, pn_len: usize, phase: bool, frames: &[u8]) -> Vec<u8> {
        let (key, hp) = keys();
        let mut buf = Vec::new();
        write_short_header(ConnectionId([9; 8]), pn, pn_len, phase, &mut buf);
        buf.extend_from_slice(frames);
        seal_short(&mut buf, 0, pn, &key, &hp);
        buf
    }

    #[test]
    fn sealed_packet_opens_to_the_same_frames() {
        let (key, hp) = keys();
        for (pn, len, phase) in [(0, 1, false), (300, 2, true), (1 << 20, 3, false)] {
            let mut pkt = build(pn, len, phase, b"\x01frames");
            let opened = open_short(&mut pkt, pn.checked_sub(1), &hp).unwrap();
            assert_eq!((opened.pn, opened.key_phase), (pn, phase));
            let range = open_payload(&mut pkt, &opened, &key).unwrap();
            assert_eq!(&pkt[range], b"\x01frames");
        }
    }

    #[test]
    fn tiny_payload_is_padded_so_the_sample_fits() {
        let (key, hp) = keys();
        let mut pkt = build(5, 1, false, b"");
        assert!(pkt.len() >= MIN_SHORT_LEN);
        let opened = open_short(&mut pkt, None, &hp).unwrap();
        let range = open_payload(&mut pkt, &opened, &key).unwrap();
        assert!(pkt[range].iter().all(|&b| b == 0));
    }

    #[test]
    fn header_protection_hides_packet_number_and_phase() {
        let a = build(1, 1, false, b"\x01same payload");
        let b = build(2, 1, true, b"\x01same payload");
        // Neither the packet number byte nor the flag bits are in the clear.
        assert_ne!(a[SHORT_PN_OFFSET], 1);
        assert!(a[0] & PROTECTED_BITS != 0 || b[0] & PROTECTED_BITS != KEY_PHASE_BIT);
    }

    #[test]
    fn any_flipped_bit_fails_authentication() {
        let (key, hp) = keys();
        let pkt = build(42, 1, false, b"\x01hello");
        for i in 0..pkt.len() {
            let mut bad = pkt.clone();
            bad[i] ^= 0x10;
            let result =
                open_short(&mut bad, Some(41), &hp).and_then(|o| open_payload(&mut bad, &o, &key));
            assert!(result.is_err(), "flip at byte {i} went unnoticed");
        }
    }
}
