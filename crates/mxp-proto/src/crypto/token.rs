//! Address-validation tokens for stateless retry.
//!
//! Under load the server answers an initiation with a token instead of
//! spending a Diffie-Hellman operation on it. Only a client that receives
//! packets at its claimed address can echo the token back, so spoofed
//! floods cost the server one HMAC each and no state.

use std::net::SocketAddr;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;

/// Bytes in a token: issue time (8) and HMAC-SHA256 tag (32).
pub const TOKEN_LEN: usize = 8 + 32;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token this server issued for this address and connection.
    #[error("retry token is invalid for this address")]
    Invalid,
    /// Issued too long ago.
    #[error("retry token has expired")]
    Expired,
}

/// The server's secret for signing tokens. It never leaves the process, so
/// tokens do not survive a restart (clients simply get a new one).
pub struct TokenKey(hmac::Key);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl Default for TokenKey {
    fn default() -> Self {
        Self::generate()
    }
}

impl TokenKey {
    /// A fresh random key.
    pub fn generate() -> TokenKey {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .expect("OS random source available");
        TokenKey(hmac::Key::new(hmac::HMAC_SHA256, &key))
    }

    /// The authenticated bytes: issue time, address, binding.
    fn signed_input(issued_at: u64, addr: &SocketAddr, binding: &[u8]) -> Vec<u8> {
        let mut input = Vec::with_capacity(8 + 16 + 2 + binding.len());
        input.extend_from_slice(&issued_at.to_be_bytes());
        match addr {
            SocketAddr::V4(a) => input.extend_from_slice(&a.ip().octets()),
            SocketAddr::V6(a) => input.extend_from_slice(&a.ip().octets()),
        }
        input.extend_from_slice(&addr.port().to_be_bytes());
        input.extend_from_slice(binding);
        input
    }

    /// Issues a token for `addr`, bound to `binding` (the connection ids of
    /// the initiation), stamped with `issued_at` (µs on the server's clock).
    pub fn issue(&self, issued_at: u64, addr: &SocketAddr, binding: &[u8]) -> [u8; TOKEN_LEN] {
        let mut out = [0u8; TOKEN_LEN];
        out[..8].copy_from_slice(&issued_at.to_be_bytes());
        let tag = hmac::sign(&self.0, &Self::signed_input(issued_at, addr, binding));
        out[8..].copy_from_slice(tag.as_ref());
        out
    }

    /// Checks a token presented by `addr`; `now` and `lifetime` are in µs.
    pub fn validate(
        &self,
        token: &[u8],
        addr: &SocketAddr,
        binding: &[u8],
        now: u64,
        lifetime: u64,
    ) -> Result<(), TokenError> {
        if token.len() != TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let mut stamp = [0u8; 8];
        stamp.copy_from_slice(&token[..8]);
        let issued_at = u64::from_be_bytes(stamp);
        // Constant-time verification by ring.
        hmac::verify(
            &self.0,
            &Self::signed_input(issued_at, addr, binding),
            &token[8..],
        )
        .map_err(|_| TokenError::Invalid)?;
        if issued_at > now || now - issued_at > lifetime {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn valid_token_is_accepted_within_lifetime() {
        let k = TokenKey::generate();
        let t = k.issue(1_000, &addr(1), b"cids");
        assert_eq!(k.validate(&t, &addr(1), b"cids", 1_500, 1_000), Ok(()));
    }

    #[test]
    fn token_is_bound_to_address_binding_key_and_time() {
        let k = TokenKey::generate();
        let t = k.issue(1_000, &addr(1), b"cids");
        assert_eq!(
            k.validate(&t, &addr(2), b"cids", 1_000, 10),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            k.validate(&t, &addr(1), b"other", 1_000, 10),
            Err(TokenError::Invalid)
        );
        let other = TokenKey::generate();
        assert_eq!(
            other.validate(&t, &addr(1), b"cids", 1_000, 10),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            k.validate(&t, &addr(1), b"cids", 5_000, 10),
            Err(TokenError::Expired)
        );
        let mut forged = t;
        forged[0] ^= 1;
        assert_eq!(
            k.validate(&forged, &addr(1), b"cids", 1_000, 10),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            k.validate(&t[..10], &addr(1), b"cids", 1_000, 10),
            Err(TokenError::Invalid)
        );
    }
}
