//! TLS for the QUIC carrier.
//!
//! QUIC needs TLS, but MXP nodes are identified by their Noise (X25519)
//! static key, not by certificates. So the TLS layer only encrypts: the
//! node presents a throwaway self-signed certificate, and the client accepts
//! any certificate *but still checks the TLS handshake signature* against
//! it, so the session keys are sound. Identity is then proven by a Noise IK
//! handshake run inside the connection and bound to this exact TLS session
//! by its exporter (see `auth`): a man in the middle would hold two TLS
//! sessions with two different exporters, and the Noise handshake fails.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// ALPN of MXP over QUIC.
pub(super) const ALPN: &[u8] = b"mxp/1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The node's TLS configuration: a fresh self-signed certificate.
pub(super) fn server_config() -> Result<rustls::ServerConfig, String> {
    let certified = rcgen::generate_simple_self_signed(vec!["mxp-node".to_owned()])
        .map_err(|e| format!("cannot generate a TLS certificate: {e}"))?;
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key.into())
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The client's TLS configuration (identity comes from the Noise binding).
pub(super) fn client_config() -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SessionOnly(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Accepts any certificate, verifies the handshake signature made with it.
#[derive(Debug)]
struct SessionOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for SessionOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Identity is proven by the Noise handshake bound to this session.
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
