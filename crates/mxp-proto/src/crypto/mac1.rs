//! mac1: the cheap proof, in every Initial, that its sender knows the
//! node's public key.
//!
//! As in WireGuard, the node checks a MAC keyed by its own public key
//! before it spends any Diffie-Hellman work: a blind sender (a scanner, a
//! flood of junk, a captured Initial with a flipped byte) costs one HMAC,
//! not five X25519 operations. It is not secret (the public key is
//! public); what it buys is that only senders who bothered to learn the key
//! reach the expensive checks, where rate limits and retry take over.

use ring::{digest, hmac};
use subtle::ConstantTimeEq;

use super::PublicKey;

/// Bytes of mac1 in an Initial.
pub const MAC1_LEN: usize = 16;

/// The key both ends derive from the node's public key.
#[derive(Clone)]
pub struct Mac1Key(hmac::Key);

impl std::fmt::Debug for Mac1Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mac1Key(..)")
    }
}

impl Mac1Key {
    /// The mac1 key of the node whose public key is `node`.
    pub fn for_node(node: &PublicKey) -> Mac1Key {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"mxp mac1");
        ctx.update(&node.0);
        let key = ctx.finish();
        Mac1Key(hmac::Key::new(hmac::HMAC_SHA256, key.as_ref()))
    }

    /// mac1 over `covered` (the Initial up to the mac).
    pub fn compute(&self, covered: &[u8]) -> [u8; MAC1_LEN] {
        let tag = hmac::sign(&self.0, covered);
        let mut out = [0u8; MAC1_LEN];
        out.copy_from_slice(&tag.as_ref()[..MAC1_LEN]);
        out
    }

    /// Whether `mac` is the mac1 of `covered`, compared in constant time.
    pub fn verify(&self, covered: &[u8], mac: &[u8]) -> bool {
        mac.len() == MAC1_LEN && bool::from(self.compute(covered).ct_eq(mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keypair;

    #[test]
    fn mac1_is_bound_to_the_node_key_and_every_covered_byte() {
        let node = Keypair::generate().public();
        let key = Mac1Key::for_node(&node);
        let mac = key.compute(b"initial bytes");
        assert!(key.verify(b"initial bytes", &mac));
        assert!(!key.verify(b"initial bytez", &mac));
        assert!(!key.verify(b"initial bytes", &mac[..15]));
        let other = Mac1Key::for_node(&Keypair::generate().public());
        assert!(!other.verify(b"initial bytes", &mac));
        assert_eq!(
            Mac1Key::for_node(&node).compute(b"initial bytes"),
            mac,
            "both ends derive the same key"
        );
    }
}
