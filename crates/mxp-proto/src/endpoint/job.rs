//! The expensive half of accepting a connection, as a value.
//!
//! Reading a Noise IK initiation and answering it costs about five X25519
//! operations (a third of a millisecond here). The endpoint decides, with
//! cheap checks only, which initiations deserve that work, then hands each
//! out as a [`HandshakeJob`] ([`Endpoint::poll_handshake`]); whoever runs the
//! endpoint runs the job wherever it likes (a worker thread, so packets of
//! established connections never wait behind it) and hands the
//! [`HandshakeDone`] back ([`Endpoint::complete_handshake`]). The core stays
//! deterministic: it never learns how long the work took.
//!
//! [`Endpoint::poll_handshake`]: super::Endpoint::poll_handshake
//! [`Endpoint::complete_handshake`]: super::Endpoint::complete_handshake

use std::fmt;
use std::sync::Arc;

use crate::config::ServerConfig;
use crate::connection::{ClientHello, ServerHello};
use crate::crypto::handshake::Responder;
use crate::crypto::{HandshakeError, Keypair, PublicKey, RESET_TOKEN_LEN, SessionSecrets};
use crate::packet::{self, ConnectionId};
use crate::transport_params::TransportParams;

/// One initiation's Diffie-Hellman work. `Send`: run it on any thread.
pub struct HandshakeJob {
    pub(super) id: u64,
    pub(super) keypair: Keypair,
    pub(super) policy: Arc<ServerConfig>,
    pub(super) prologue: [u8; packet::PROLOGUE_LEN],
    pub(super) noise: Vec<u8>,
    /// The node's wall clock when the job was handed out (ns since the Unix
    /// epoch), for the clock-skew check.
    pub(super) unix_now_ns: u64,
    /// What the welcome gives a client that passes: the connection id and
    /// reset token the endpoint chose (it owns both), and our limits.
    pub(super) local_cid: ConnectionId,
    pub(super) reset_token: [u8; RESET_TOKEN_LEN],
    pub(super) params: TransportParams,
}

impl fmt::Debug for HandshakeJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeJob")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What a [`HandshakeJob`] found; hand it to
/// [`Endpoint::complete_handshake`](super::Endpoint::complete_handshake).
#[derive(Debug)]
pub struct HandshakeDone {
    pub(super) id: u64,
    pub(super) result: JobResult,
}

#[derive(Debug)]
pub(super) enum JobResult {
    /// Authenticated and welcomed: Noise message 2 carries the welcome.
    Accept {
        msg2: Vec<u8>,
        secrets: SessionSecrets,
        client_key: PublicKey,
        hello: ClientHello,
        /// The connection id the welcome gave the client.
        local_cid: ConnectionId,
    },
    /// Authenticated and refused, with an answer the client can trust.
    Refuse {
        msg2: Vec<u8>,
        client_key: PublicKey,
        why: Refused,
    },
    /// Did not decrypt, or not a Noise IK message.
    Failed(HandshakeError),
    /// Decrypted, but the client's hello is not well formed.
    Malformed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    ClientNotAllowed,
    /// Stamped this far (ns, signed) from the node's clock.
    ClockSkew {
        offset_ns: i128,
    },
}

impl HandshakeJob {
    /// Does the work: reads the initiation, applies the node's policy
    /// (clock skew, allow-list) and writes the answer.
    pub fn run(self) -> HandshakeDone {
        HandshakeDone {
            id: self.id,
            result: self.work(),
        }
    }

    fn work(self) -> JobResult {
        let (responder, client_key, payload) =
            match Responder::read(&self.keypair, &self.prologue, &self.noise) {
                Ok(read) => read,
                Err(e) => return JobResult::Failed(e),
            };
        let Some(hello) = ClientHello::decode(&payload) else {
            return JobResult::Malformed;
        };
        let skew = self.policy.max_clock_skew.as_nanos();
        let offset_ns = i128::from(hello.timestamp) - i128::from(self.unix_now_ns);
        let allowed = self
            .policy
            .allowed_clients
            .as_ref()
            .is_none_or(|list| list.contains(&client_key));
        let refused = if offset_ns.unsigned_abs() > skew {
            Some(Refused::ClockSkew { offset_ns })
        } else if !allowed {
            Some(Refused::ClientNotAllowed)
        } else {
            None
        };
        let local_cid = self.local_cid;
        let answer = match refused {
            None => ServerHello::Accept {
                cid: local_cid,
                reset_token: self.reset_token,
                params: self.params,
            },
            Some(Refused::ClientNotAllowed) => ServerHello::ClientNotAllowed,
            Some(Refused::ClockSkew { .. }) => ServerHello::ClockSkew {
                server_time_ns: self.unix_now_ns,
            },
        };
        let mut payload = Vec::new();
        answer.encode(&mut payload);
        match (responder.respond(&payload), refused) {
            (Err(e), _) => JobResult::Failed(e),
            (Ok((msg2, secrets)), None) => JobResult::Accept {
                msg2,
                secrets,
                client_key,
                hello,
                local_cid,
            },
            (Ok((msg2, _)), Some(why)) => JobResult::Refuse {
                msg2,
                client_key,
                why,
            },
        }
    }
}
