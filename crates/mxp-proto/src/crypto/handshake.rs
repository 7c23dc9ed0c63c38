//! The Noise IK handshake (`Noise_IK_25519_ChaChaPoly_BLAKE2s`, via `snow`).
//!
//! IK fits a client that already knows which server it wants: the first
//! message is encrypted to the server's static key and carries the client's
//! static key, so one round trip authenticates both ends and the ephemeral
//! keys give forward secrecy. This module is only the cryptographic part;
//! packets, retransmission and replay policy live in the connection and
//! endpoint.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use curve25519_dalek::montgomery::MontgomeryPoint;
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use thiserror::Error;

use super::{SECRET_LEN, Secret, SessionSecrets};

/// The Noise protocol name both ends must agree on.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Length of an X25519 key.
pub const KEY_LEN: usize = 32;
/// Largest Noise message.
const MAX_NOISE_MESSAGE: usize = 65_535;

/// Room for an IK message carrying `payload`: an ephemeral key, an
/// encrypted static key, and two tags at most besides it.
fn message_len(payload: &[u8]) -> usize {
    (payload.len() + 2 * KEY_LEN + 3 * 16).min(MAX_NOISE_MESSAGE)
}

fn params() -> NoiseParams {
    static PARAMS: OnceLock<NoiseParams> = OnceLock::new();
    PARAMS
        .get_or_init(|| NOISE_PARAMS.parse().expect("valid Noise protocol name"))
        .clone()
}

/// Why a handshake message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The message did not authenticate: it was corrupted, or the initiator
    /// encrypted it to a different server key than ours.
    #[error("handshake message failed to decrypt (corrupted, or encrypted to another server key)")]
    Decrypt,
    /// The message is not a well-formed Noise IK message.
    #[error("malformed handshake message")]
    Malformed,
    /// `snow` refused an operation for a reason that is not the peer's fault.
    #[error("noise handshake error: {0}")]
    Noise(String),
}

impl From<snow::Error> for HandshakeError {
    fn from(e: snow::Error) -> Self {
        match e {
            snow::Error::Decrypt => HandshakeError::Decrypt,
            snow::Error::Input | snow::Error::Dh => HandshakeError::Malformed,
            other => HandshakeError::Noise(format!("{other:?}")),
        }
    }
}

/// A node's static X25519 public key: its identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// Lower-case hex, the form operators pass on the command line.
impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A public key was not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("a public key is 64 hexadecimal digits (32 bytes), got {0:?}")]
pub struct ParseKeyError(String);

impl FromStr for PublicKey {
    type Err = ParseKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bad = || ParseKeyError(t.chars().take(80).collect());
        if t.len() != 2 * KEY_LEN || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; KEY_LEN];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(PublicKey(out))
    }
}

/// A node's static keypair.
#[derive(Clone)]
pub struct Keypair {
    secret: [u8; KEY_LEN],
    public: PublicKey,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Keypair {
    /// A fresh keypair from the operating system's random source.
    pub fn generate() -> Keypair {
        let kp = snow::Builder::new(params())
            .generate_keypair()
            .expect("OS random source available");
        let mut secret = [0u8; KEY_LEN];
        secret.copy_from_slice(&kp.private);
        Keypair::from_secret(secret)
    }

    /// Rebuilds a keypair from its secret half (as stored on disk).
    pub fn from_secret(secret: [u8; KEY_LEN]) -> Keypair {
        let mut dh = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .expect("X25519 available");
        dh.set(&secret);
        let mut public = [0u8; KEY_LEN];
        public.copy_from_slice(dh.pubkey());
        Keypair {
            secret,
            public: PublicKey(public),
        }
    }

    /// The public half, to hand to peers.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The secret half, for writing a key file. Handle with care.
    pub fn secret_bytes(&self) -> &[u8; KEY_LEN] {
        &self.secret
    }
}

/// snow's own primitives, except that X25519 is handed our static key's
/// public half instead of deriving it: snow's `Builder` takes only private
/// keys and recomputes the public one on every handshake, a scalar
/// multiplication (one of six on each side of an IK handshake, about
/// 80 µs here) for a value that never changes.
struct Resolver {
    local: Keypair,
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        DefaultResolver.resolve_rng()
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(X25519 {
                known: self.local.clone(),
                private: [0; KEY_LEN],
                public: [0; KEY_LEN],
            })),
            other => DefaultResolver.resolve_dh(other),
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// X25519 as snow's default resolver does it (curve25519-dalek), with the
/// public half of `known` taken as given.
struct X25519 {
    known: Keypair,
    private: [u8; KEY_LEN],
    public: [u8; KEY_LEN],
}

impl X25519 {
    fn derive(&mut self) {
        self.public = if self.private == self.known.secret {
            self.known.public.0
        } else {
            MontgomeryPoint::mul_base_clamped(self.private).to_bytes()
        };
    }
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        KEY_LEN
    }

    fn priv_len(&self) -> usize {
        KEY_LEN
    }

    fn set(&mut self, privkey: &[u8]) {
        let n = privkey.len().min(KEY_LEN);
        self.private = [0; KEY_LEN];
        self.private[..n].copy_from_slice(&privkey[..n]);
        self.derive();
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        rng.try_fill_bytes(&mut self.private)?;
        self.derive();
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.private
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let peer: [u8; KEY_LEN] = pubkey
            .get(..KEY_LEN)
            .and_then(|k| k.try_into().ok())
            .ok_or(snow::Error::Dh)?;
        let shared = MontgomeryPoint(peer).mul_clamped(self.private).to_bytes();
        out.get_mut(..KEY_LEN)
            .ok_or(snow::Error::Dh)?
            .copy_from_slice(&shared);
        Ok(())
    }
}

/// A Noise builder for `local`'s handshakes.
fn builder(local: &Keypair) -> snow::Builder<'_> {
    snow::Builder::with_resolver(
        params(),
        Box::new(Resolver {
            local: local.clone(),
        }),
    )
}

fn split(state: &mut snow::HandshakeState) -> SessionSecrets {
    // Noise's Split gives (initiator → responder, responder → initiator).
    let (i2r, r2i) = state.dangerously_get_raw_split();
    let (local, remote) = if state.is_initiator() {
        (i2r, r2i)
    } else {
        (r2i, i2r)
    };
    let as_secret = |k: [u8; SECRET_LEN]| Secret::new(k);
    SessionSecrets {
        local: as_secret(local),
        remote: as_secret(remote),
    }
}

/// The client's side, between sending the initiation and reading the reply.
pub struct Initiator {
    state: snow::HandshakeState,
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Initiator(..)")
    }
}

impl Initiator {
    /// Builds the first handshake message, encrypted to `server`.
    ///
    /// `prologue` binds data both ends know but Noise does not carry (the
    /// packet's connection ids) into the handshake hash, so tampering with
    /// it makes the handshake fail.
    pub fn start(
        local: &Keypair,
        server: &PublicKey,
        prologue: &[u8],
        payload: &[u8],
    ) -> Result<(Initiator, Vec<u8>), HandshakeError> {
        let mut state = builder(local)
            .local_private_key(&local.secret)?
            .remote_public_key(&server.0)?
            .prologue(prologue)?
            .build_initiator()?;
        let mut msg = vec![0u8; message_len(payload)];
        let n = state.write_message(payload, &mut msg)?;
        msg.truncate(n);
        Ok((Initiator { state }, msg))
    }

    /// Reads the server's reply; on success the session is established.
    pub fn finish(mut self, reply: &[u8]) -> Result<(SessionSecrets, Vec<u8>), HandshakeError> {
        let mut payload = vec![0u8; reply.len()];
        let n = self.state.read_message(reply, &mut payload)?;
        payload.truncate(n);
        if !self.state.is_handshake_finished() {
            return Err(HandshakeError::Malformed);
        }
        Ok((split(&mut self.state), payload))
    }
}

/// The server's side, after reading an initiation and before answering it.
pub struct Responder {
    state: snow::HandshakeState,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Responder(..)")
    }
}

impl Responder {
    /// Reads an initiation addressed to `local`. Returns the client's static
    /// key and the payload so policy (allow-list, replay) can be applied
    /// before answering.
    pub fn read(
        local: &Keypair,
        prologue: &[u8],
        initiation: &[u8],
    ) -> Result<(Responder, PublicKey, Vec<u8>), HandshakeError> {
        let mut state = builder(local)
            .local_private_key(&local.secret)?
            .prologue(prologue)?
            .build_responder()?;
        let mut payload = vec![0u8; initiation.len()];
        let n = state.read_message(initiation, &mut payload)?;
        payload.truncate(n);
        let remote = state
            .get_remote_static()
            .and_then(|k| <[u8; KEY_LEN]>::try_from(k).ok())
            .ok_or(HandshakeError::Malformed)?;
        Ok((Responder { state }, PublicKey(remote), payload))
    }

    /// Writes the reply; the session is established on this side.
    pub fn respond(mut self, payload: &[u8]) -> Result<(Vec<u8>, SessionSecrets), HandshakeError> {
        let mut msg = vec![0u8; message_len(payload)];
        let n = self.state.write_message(payload, &mut msg)?;
        msg.truncate(n);
        Ok((msg, split(&mut self.state)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(
        client: &Keypair,
        server: &Keypair,
        server_key_known_to_client: PublicKey,
    ) -> Result<(SessionSecrets, SessionSecrets, PublicKey), HandshakeError> {
        let (init, msg1) = Initiator::start(client, &server_key_known_to_client, b"p", b"hi")?;
        let (resp, client_key, payload) = Responder::read(server, b"p", &msg1)?;
        assert_eq!(payload, b"hi");
        let (msg2, server_secrets) = resp.respond(b"welcome")?;
        let (client_secrets, payload2) = init.finish(&msg2)?;
        assert_eq!(payload2, b"welcome");
        Ok((client_secrets, server_secrets, client_key))
    }

    #[test]
    fn both_ends_agree_on_directional_secrets() {
        let (c, s) = (Keypair::generate(), Keypair::generate());
        let (cs, ss, client_key) = handshake(&c, &s, s.public()).unwrap();
        assert_eq!(client_key, c.public());
        assert_eq!(cs.local.0, ss.remote.0);
        assert_eq!(cs.remote.0, ss.local.0);
        assert_ne!(cs.local.0, cs.remote.0);
    }

    #[test]
    fn wrong_server_key_fails_to_decrypt_at_the_server() {
        let (c, s, other) = (
            Keypair::generate(),
            Keypair::generate(),
            Keypair::generate(),
        );
        let err = handshake(&c, &s, other.public()).unwrap_err();
        assert_eq!(err, HandshakeError::Decrypt);
    }

    #[test]
    fn prologue_mismatch_fails() {
        let (c, s) = (Keypair::generate(), Keypair::generate());
        let (_, msg1) = Initiator::start(&c, &s.public(), b"a", b"").unwrap();
        assert!(Responder::read(&s, b"b", &msg1).is_err());
    }

    #[test]
    fn truncated_or_garbage_initiations_are_errors() {
        let (c, s) = (Keypair::generate(), Keypair::generate());
        let (_, msg1) = Initiator::start(&c, &s.public(), b"", b"payload").unwrap();
        for cut in 0..msg1.len() {
            assert!(Responder::read(&s, b"", &msg1[..cut]).is_err());
        }
        assert!(Responder::read(&s, b"", &[0xff; 300]).is_err());
    }

    #[test]
    fn public_key_text_round_trips_and_rejects_junk() {
        let k = Keypair::generate().public();
        assert_eq!(k.to_string().parse::<PublicKey>().unwrap(), k);
        assert!("abc".parse::<PublicKey>().is_err());
        assert!("zz".repeat(32).parse::<PublicKey>().is_err());
        assert!("é".repeat(64).parse::<PublicKey>().is_err());
        assert!(
            "+f".repeat(32).parse::<PublicKey>().is_err(),
            "signs are not hex"
        );
    }

    #[test]
    fn our_x25519_agrees_with_snows_own() {
        // A handshake between our resolver and snow's default one.
        let (c, s) = (Keypair::generate(), Keypair::generate());
        let mut responder = snow::Builder::new(params())
            .local_private_key(s.secret_bytes())
            .unwrap()
            .build_responder()
            .unwrap();
        let (init, msg1) = Initiator::start(&c, &s.public(), b"", b"hi").unwrap();
        let mut payload = [0u8; 64];
        let n = responder.read_message(&msg1, &mut payload).unwrap();
        assert_eq!(&payload[..n], b"hi");
        assert_eq!(responder.get_remote_static(), Some(&c.public().0[..]));
        let mut msg2 = [0u8; 128];
        let n = responder.write_message(b"ok", &mut msg2).unwrap();
        let (_, answer) = init.finish(&msg2[..n]).unwrap();
        assert_eq!(answer, b"ok");
    }

    #[test]
    fn keypair_from_secret_recovers_public_key() {
        let k = Keypair::generate();
        assert_eq!(Keypair::from_secret(*k.secret_bytes()).public(), k.public());
    }
}
