//! Node identity on the QUIC carrier: a Noise IK handshake (the same
//! pattern and keys as the MXP carrier) on the connection's first stream,
//! with the TLS session's exporter as the Noise prologue.
//!
//! The stream stays open afterwards as the control channel: the node
//! writes [`GOAWAY`] on it to drain the connection.

use mxp_proto::crypto::handshake::{Initiator, Responder};
use mxp_proto::crypto::{Keypair, PublicKey};
use mxp_proto::{ConnectionError, HandshakeError, ServerConfig};
use quinn::{RecvStream, SendStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::handshake_workers::HandshakeWorkers;

/// Control byte: the node is draining this connection.
pub(super) const GOAWAY: u8 = 1;

const EXPORTER_LABEL: &[u8] = b"EXPORTER-mxp-noise-binding";
const ACCEPT: u8 = 0;
const CLIENT_NOT_ALLOWED: u8 = 1;
/// Largest Noise message accepted on the control stream.
const MAX_MESSAGE: usize = 1024;

/// The Noise prologue: a label and the TLS exporter of this connection.
fn prologue(conn: &quinn::Connection) -> Result<Vec<u8>, ConnectionError> {
    let mut exported = [0u8; 32];
    conn.export_keying_material(&mut exported, EXPORTER_LABEL, b"")
        .map_err(|_| protocol("TLS exporter unavailable"))?;
    let mut p = b"MXP/QUIC/1".to_vec();
    p.extend_from_slice(&exported);
    Ok(p)
}

fn protocol(reason: &str) -> ConnectionError {
    ConnectionError::TransportError(mxp_proto::TransportError {
        code: mxp_proto::TransportErrorCode::PROTOCOL_VIOLATION,
        frame_type: None,
        reason: reason.to_owned(),
    })
}

async fn write_message(send: &mut SendStream, msg: &[u8]) -> Result<(), ConnectionError> {
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    send.write_all(&framed)
        .await
        .map_err(|e| super::write_error(e).into_connection_error())
}

async fn read_message(recv: &mut RecvStream) -> Result<Vec<u8>, ConnectionError> {
    let mut len = [0u8; 2];
    recv.read_exact(&mut len)
        .await
        .map_err(|_| protocol("control stream ended during the handshake"))?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > MAX_MESSAGE {
        return Err(protocol("oversized handshake message"));
    }
    let mut msg = vec![0u8; len];
    recv.read_exact(&mut msg)
        .await
        .map_err(|_| protocol("control stream ended during the handshake"))?;
    Ok(msg)
}

/// The client's side: proves the node holds `server_key`'s secret. Returns
/// the control stream's receiving half (for GOAWAY).
pub(super) async fn client(
    conn: &quinn::Connection,
    keypair: &Keypair,
    server_key: &PublicKey,
) -> Result<RecvStream, ConnectionError> {
    let prologue = prologue(conn)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(super::connection_error)?;
    let (initiator, msg1) =
        Initiator::start(keypair, server_key, &prologue, &[]).map_err(handshake_error)?;
    write_message(&mut send, &msg1).await?;
    let msg2 = read_message(&mut recv).await?;
    let (_, payload) = initiator.finish(&msg2).map_err(handshake_error)?;
    match payload.first() {
        Some(&ACCEPT) => Ok(recv),
        Some(&CLIENT_NOT_ALLOWED) => Err(ConnectionError::ClientNotAllowed),
        _ => Err(protocol("malformed handshake answer")),
    }
}

/// What the node learned from a client's handshake.
#[derive(Debug)]
pub(super) struct Authenticated {
    pub client_key: PublicKey,
    /// The control stream's sending half (GOAWAY goes here).
    pub control: SendStream,
}

/// The node's side: authenticates the client and applies the allow-list.
/// The Diffie-Hellman work runs on the node's handshake workers.
pub(super) async fn server(
    conn: &quinn::Connection,
    keypair: &Keypair,
    policy: &Arc<ServerConfig>,
    (workers, jobs): (&HandshakeWorkers, Arc<AtomicU64>),
) -> Result<Authenticated, ConnectionError> {
    let prologue = prologue(conn)?;
    let (mut send, mut recv) = conn.accept_bi().await.map_err(super::connection_error)?;
    let msg1 = read_message(&mut recv).await?;
    let (keypair, policy) = (keypair.clone(), policy.clone());
    let answer = workers
        .compute(move || {
            jobs.fetch_add(1, Ordering::Relaxed);
            let (responder, client_key, _) = Responder::read(&keypair, &prologue, &msg1)?;
            let allowed = policy
                .allowed_clients
                .as_ref()
                .is_none_or(|list| list.contains(&client_key));
            let status = if allowed { ACCEPT } else { CLIENT_NOT_ALLOWED };
            let (msg2, _) = responder.respond(&[status])?;
            Ok::<_, HandshakeError>((msg2, client_key, allowed))
        })
        .await
        .ok_or_else(|| protocol("the handshake worker failed"))?;
    let (msg2, client_key, allowed) = answer.map_err(handshake_error)?;
    write_message(&mut send, &msg2).await?;
    if !allowed {
        let _ = send.finish();
        return Err(ConnectionError::ClientNotAllowed);
    }
    Ok(Authenticated {
        client_key,
        control: send,
    })
}

fn handshake_error(e: HandshakeError) -> ConnectionError {
    match e {
        // The node could not be authenticated as the holder of the key.
        HandshakeError::Decrypt => ConnectionError::ServerKeyMismatch,
        other => protocol(&other.to_string()),
    }
}
