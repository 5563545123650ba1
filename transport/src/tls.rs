//! TLS and QUIC configuration: mutual TLS 1.3 against the cluster CA, with
//! exactly one crypto provider (ring).
//!
//! Every rustls builder here is `builder_with_provider(ring)`: a
//! process-level default provider is never needed, so a second provider
//! pulled in elsewhere in the workspace cannot make these panic.

use crate::pki::{Identity, SHARED_SAN};
use crate::{Error, NetConfig, Result};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{EndpointConfig, MtuDiscoveryConfig, TransportConfig, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName};
use std::sync::Arc;

/// ALPN protocol id; a peer speaking anything else fails the handshake.
const ALPN: &[u8] = b"baton";

/// The name clients verify servers against (all node certificates have it).
pub(crate) const SERVER_NAME: &str = SHARED_SAN;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &'static str) -> impl Fn(rustls::Error) -> Error {
    move |e| Error::Tls(format!("{what}: {e}"))
}

fn roots(identity: &Identity) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots.add(identity.ca.clone()).map_err(tls_err("the cluster CA certificate is unusable"))?;
    Ok(Arc::new(roots))
}

/// Server side: present our certificate, require one from the cluster CA.
pub(crate) fn server_config(identity: &Identity, net: &NetConfig) -> Result<quinn::ServerConfig> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(identity)?, provider())
        .build()
        .map_err(|e| Error::Tls(format!("client verifier: {e}")))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("TLS 1.3 unavailable"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.key())
        .map_err(tls_err("our certificate or key is unusable"))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config(net)?);
    Ok(config)
}

/// Client side: verify the server against the cluster CA, present ours.
pub(crate) fn client_config(identity: &Identity, net: &NetConfig) -> Result<quinn::ClientConfig> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("TLS 1.3 unavailable"))?
        .with_root_certificates(roots(identity)?)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key())
        .map_err(tls_err("our certificate or key is unusable"))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config(net)?);
    Ok(config)
}

/// The endpoint must accept datagrams as large as our MTU, or the peer caps
/// its packets at the default (CRATES.md: one of the three MTU knobs).
pub(crate) fn endpoint_config(net: &NetConfig) -> Result<EndpointConfig> {
    let mut config = EndpointConfig::default();
    config.max_udp_payload_size(net.mtu.max(1200)).map_err(|e| Error::Tls(format!("mtu {}: {e}", net.mtu)))?;
    Ok(config)
}

/// The send priority of bulk streams: below the control stream's (0), so a
/// control frame never waits behind bulk bytes. With fair queuing off (see
/// [`transport_config`]) bulk streams of equal priority go out in the order
/// they were written, one after another, instead of round-robin: a frame
/// queued first arrives whole first, and its receiver can decode it while
/// the next one travels (round-robin made a migration's parts all arrive
/// at its end).
pub(crate) const BULK_PRIORITY: i32 = -1;

/// Timeouts, keep-alive, the MTU knobs and flow-control windows.
pub(crate) fn transport_config(net: &NetConfig) -> Result<Arc<TransportConfig>> {
    let mtu = net.mtu.max(1200);
    let mut mtu_discovery = MtuDiscoveryConfig::default();
    mtu_discovery.upper_bound(mtu);
    let idle = net
        .idle_timeout
        .try_into()
        .map_err(|_| Error::Tls(format!("idle timeout {:?} is too long", net.idle_timeout)))?;
    let window = VarInt::from_u64(net.stream_window).unwrap_or(VarInt::MAX);
    // Ten full packets, as TCP's IW10: quinn sizes its default (14720 B)
    // for 1200-byte packets, which at 6000 bytes left an odd packet waiting
    // out the peer's 25 ms ack delay on a fresh connection (measured: the
    // first 1 MiB frame took 30 ms instead of 3 ms).
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(10 * u64::from(mtu));
    let mut config = TransportConfig::default();
    config.congestion_controller_factory(Arc::new(cubic));
    config
        .initial_mtu(mtu)
        .mtu_discovery_config(Some(mtu_discovery))
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(net.keep_alive))
        .stream_receive_window(window)
        .receive_window(VarInt::MAX)
        .send_window(net.stream_window.saturating_mul(4))
        .send_fairness(false)
        .max_concurrent_uni_streams(VarInt::from_u32(1024))
        .max_concurrent_bidi_streams(VarInt::from_u32(4));
    Ok(Arc::new(config))
}

/// Checks that `name` (claimed in the hello) is one of the names in the
/// peer's certificate, which TLS already verified against the cluster CA.
pub(crate) fn verify_peer_name(conn: &quinn::Connection, name: &str) -> Result<()> {
    let certs = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| Error::Protocol("the peer presented no certificate".into()))?;
    let leaf = certs.first().ok_or_else(|| Error::Protocol("the peer presented an empty certificate chain".into()))?;
    let server_name =
        ServerName::try_from(name).map_err(|_| Error::Protocol(format!("{name:?} is not a valid node name")))?;
    webpki::EndEntityCert::try_from(leaf).and_then(|cert| cert.verify_is_valid_for_subject_name(&server_name)).map_err(
        |_| Error::Protocol(format!("the peer calls itself {name:?} but its certificate was issued for another node")),
    )
}
