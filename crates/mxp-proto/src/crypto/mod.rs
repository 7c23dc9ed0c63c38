//! Cryptography, all of it from vetted crates: the Noise IK handshake is
//! `snow`; packet AEAD (AES-256-GCM), header protection (AES-256, as RFC
//! 9001 §5.4.3 does it), HKDF and HMAC are `ring`. AES rather than ChaCha20
//! for packets because every server CPU we target has AES-NI, where it
//! seals a small packet about 3x faster (see `cargo bench -p mxp-proto`).
//!
//! This module only composes them: it turns the secrets Noise agrees on into
//! per-direction packet keys, derives the next generation of keys for key
//! rotation, signs address-validation tokens, and computes the mac1 that
//! lets a node drop junk Initials before any Diffie-Hellman work.

pub mod handshake;
pub mod mac1;
pub mod token;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, quic};
use ring::hkdf;
use thiserror::Error;

pub use handshake::{HandshakeError, Keypair, PublicKey};
pub use mac1::{MAC1_LEN, Mac1Key};

/// Bytes an AEAD tag adds to every protected packet.
pub const TAG_LEN: usize = 16;
/// Bytes of ciphertext sampled to compute a header-protection mask.
pub const SAMPLE_LEN: usize = 16;
/// Length of a traffic secret.
pub const SECRET_LEN: usize = 32;

/// Fills `buf` from the operating system's secure random source (connection
/// ids, path challenges: values an off-path attacker must not guess).
pub fn fill_random(buf: &mut [u8]) {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .expect("OS random source available");
}

/// A packet failed authentication: it was corrupted, forged, or protected
/// with keys this end no longer (or never) had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("packet failed authentication")]
pub struct DecryptError;

/// One direction's traffic secret. Packet keys are derived from it, and so
/// is the next secret when keys rotate.
#[derive(Clone)]
pub struct Secret([u8; SECRET_LEN]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, not even in debug logs.
        f.write_str("Secret(..)")
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl Secret {
    /// Wraps raw secret bytes (the output of the Noise split).
    pub fn new(bytes: [u8; SECRET_LEN]) -> Self {
        Secret(bytes)
    }

    /// HKDF-Expand with a purpose label, so each derived key is independent.
    fn expand<const N: usize>(&self, label: &[u8]) -> [u8; N] {
        let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &self.0);
        let mut out = [0u8; N];
        // Cannot fail: N is far below HKDF-SHA256's 255 × 32 byte limit.
        prk.expand(&[label], Len(N))
            .and_then(|okm| okm.fill(&mut out))
            .expect("HKDF output length within limits");
        out
    }

    /// The secret of the next key generation (key rotation).
    pub fn next(&self) -> Secret {
        Secret(self.expand(b"mxp ku"))
    }

    /// The AEAD key and nonce base for packets protected under this secret.
    pub fn packet_key(&self) -> PacketKey {
        let key: [u8; 32] = self.expand(b"mxp key");
        let iv: [u8; 12] = self.expand(b"mxp iv");
        PacketKey {
            key: LessSafeKey::new(UnboundKey::new(&aead::AES_256_GCM, &key).expect("32-byte key")),
            iv,
        }
    }

    /// The header-protection key. It does not change when packet keys
    /// rotate, so a receiver can always read the key-phase bit.
    pub fn header_key(&self) -> HeaderKey {
        let key: [u8; 32] = self.expand(b"mxp hp");
        HeaderKey(quic::HeaderProtectionKey::new(&quic::AES_256, &key).expect("32-byte key"))
    }
}

/// AEAD key for one direction and one key generation.
pub struct PacketKey {
    key: LessSafeKey,
    iv: [u8; 12],
}

impl std::fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketKey(..)")
    }
}

impl PacketKey {
    /// Nonce = IV xor packet number: unique as long as packet numbers never
    /// repeat within a key generation, which they cannot (they only grow).
    fn nonce(&self, pn: u64) -> Nonce {
        let mut n = self.iv;
        for (b, p) in n[4..].iter_mut().zip(pn.to_be_bytes()) {
            *b ^= p;
        }
        Nonce::assume_unique_for_key(n)
    }

    /// Encrypts `payload` in place and returns the tag to append. `header` is
    /// authenticated but not encrypted.
    pub fn seal(&self, pn: u64, header: &[u8], payload: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .key
            .seal_in_place_separate_tag(self.nonce(pn), Aad::from(header), payload)
            .expect("payload within AEAD limits");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Decrypts `payload_and_tag` in place; returns the plaintext length.
    pub fn open(
        &self,
        pn: u64,
        header: &[u8],
        payload_and_tag: &mut [u8],
    ) -> Result<usize, DecryptError> {
        self.key
            .open_in_place(self.nonce(pn), Aad::from(header), payload_and_tag)
            .map(|plain| plain.len())
            .map_err(|_| DecryptError)
    }
}

/// Header-protection key: masks the packet number and the protected flag
/// bits so on-path observers cannot track or tamper with them.
pub struct HeaderKey(quic::HeaderProtectionKey);

impl std::fmt::Debug for HeaderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeaderKey(..)")
    }
}

impl HeaderKey {
    /// Five mask bytes computed from a ciphertext sample.
    pub fn mask(&self, sample: &[u8; SAMPLE_LEN]) -> [u8; 5] {
        self.0
            .new_mask(sample)
            .expect("sample has the algorithm's length")
    }
}

/// Length of a stateless-reset token.
pub const RESET_TOKEN_LEN: usize = 16;

/// Derives stateless-reset tokens from the node's static secret, so a node
/// that restarted (and lost every connection) can still prove to a client
/// that its connection is gone, and the client fails at once instead of
/// waiting for its idle timeout.
pub struct ResetKey(ring::hmac::Key);

impl std::fmt::Debug for ResetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetKey(..)")
    }
}

impl ResetKey {
    /// The key of the node whose static secret is `static_secret`.
    pub fn new(static_secret: &[u8; 32]) -> ResetKey {
        let key: [u8; 32] = Secret::new(*static_secret).expand(b"mxp stateless reset");
        ResetKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key))
    }

    /// The token for a connection id this node issued.
    pub fn token(&self, cid: &[u8]) -> [u8; RESET_TOKEN_LEN] {
        let tag = ring::hmac::sign(&self.0, cid);
        let mut out = [0u8; RESET_TOKEN_LEN];
        out.copy_from_slice(&tag.as_ref()[..RESET_TOKEN_LEN]);
        out
    }
}

/// Both directions' secrets of a session, as agreed by the handshake.
#[derive(Debug, Clone)]
pub struct SessionSecrets {
    /// What this end protects its packets with.
    pub local: Secret,
    /// What the peer protects its packets with.
    pub remote: Secret,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> Secret {
        Secret::new([b; SECRET_LEN])
    }

    #[test]
    fn seal_then_open_round_trips() {
        let key = secret(1).packet_key();
        let mut buf = b"hello frames".to_vec();
        let tag = key.seal(7, b"hdr", &mut buf);
        assert_ne!(&buf[..], b"hello frames");
        buf.extend_from_slice(&tag);
        let n = key.open(7, b"hdr", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello frames");
    }

    #[test]
    fn wrong_packet_number_header_or_key_fails() {
        let key = secret(1).packet_key();
        let mut sealed = b"payload".to_vec();
        let tag = key.seal(7, b"hdr", &mut sealed);
        sealed.extend_from_slice(&tag);
        assert_eq!(key.open(8, b"hdr", &mut sealed.clone()), Err(DecryptError));
        assert_eq!(key.open(7, b"hdX", &mut sealed.clone()), Err(DecryptError));
        let other = secret(2).packet_key();
        assert_eq!(
            other.open(7, b"hdr", &mut sealed.clone()),
            Err(DecryptError)
        );
        let next = secret(1).next().packet_key();
        assert_eq!(next.open(7, b"hdr", &mut sealed.clone()), Err(DecryptError));
    }

    #[test]
    fn rotation_yields_fresh_keys_deterministically() {
        let a = secret(3);
        assert_eq!(a.next().0, a.next().0);
        assert_ne!(a.next().0, a.0);
        assert_ne!(a.next().next().0, a.next().0);
    }

    #[test]
    fn header_mask_depends_on_sample() {
        let hp = secret(4).header_key();
        assert_ne!(hp.mask(&[0; 16]), hp.mask(&[1; 16]));
        assert_eq!(hp.mask(&[9; 16]), hp.mask(&[9; 16]));
    }

    #[test]
    fn reset_tokens_are_stable_per_node_and_id() {
        let a = ResetKey::new(&[1; 32]);
        assert_eq!(a.token(b"cid-1"), ResetKey::new(&[1; 32]).token(b"cid-1"));
        assert_ne!(a.token(b"cid-1"), a.token(b"cid-2"));
        assert_ne!(a.token(b"cid-1"), ResetKey::new(&[2; 32]).token(b"cid-1"));
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let s = secret(0xab);
        let shown = format!("{s:?} {:?} {:?}", s.packet_key(), s.header_key());
        assert!(!shown.contains("171") && !shown.to_lowercase().contains("ab"));
    }
}
