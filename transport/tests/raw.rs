//! Misbehaving peers, driven by a raw quinn client that holds a valid
//! cluster identity: bad hellos, oversized and truncated frames. The node
//! must refuse or disconnect with a reason, never panic or over-allocate.

mod common;

use anyhow::{bail, Context, Result};
use baton_transport::{raw, ClusterCa, Event, NetConfig, Node, PeerId, PROTOCOL_VERSION};
use common::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const MAX: usize = 1 << 20;

/// A raw connection to a node plus the runtime that drives it.
struct RawPeer {
    rt: tokio::runtime::Runtime,
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

fn hello_bytes(version: u32, name: &str) -> Vec<u8> {
    let mut out = raw::MAGIC.to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

impl RawPeer {
    /// Connects with a certificate for `cert_name` and sends `hello` as the
    /// first control frame.
    fn connect(ca: &ClusterCa, cert_name: &str, server: SocketAddr, hello: &[u8]) -> Result<Self> {
        let config = raw::client_config(&ca.issue(cert_name)?, &NetConfig::default())?;
        Self::connect_with(config, server, hello)
    }

    fn connect_with(config: quinn::ClientConfig, server: SocketAddr, hello: &[u8]) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let frame = raw::encode_frame(hello);
        let (endpoint, conn, send, recv) = rt.block_on(async {
            let endpoint = quinn::Endpoint::client(local())?;
            let conn = endpoint.connect_with(config, server, raw::SERVER_NAME)?.await?;
            let (mut send, recv) = conn.open_bi().await?;
            send.write_all(&frame).await?;
            anyhow::Ok((endpoint, conn, send, recv))
        })?;
        Ok(RawPeer { rt, _endpoint: endpoint, conn, send, recv })
    }

    /// The server's reply: (status, text).
    fn reply(&mut self) -> Result<(u8, String)> {
        let recv = &mut self.recv;
        let body = self.rt.block_on(async {
            tokio::time::timeout(WAIT, async {
                let mut header = [0u8; 8];
                recv.read_exact(&mut header).await?;
                let mut body = vec![0u8; u64::from_le_bytes(header) as usize];
                recv.read_exact(&mut body).await?;
                anyhow::Ok(body)
            })
            .await
            .context("no hello reply")?
        })?;
        let text = String::from_utf8(body[11..].to_vec())?;
        Ok((body[4], text))
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let send = &mut self.send;
        self.rt.block_on(send.write_all(bytes))?;
        Ok(())
    }

    /// Opens a bulk stream, writes `bytes` and finishes it.
    fn bulk(&mut self, bytes: &[u8]) -> Result<()> {
        let conn = self.conn.clone();
        self.rt.block_on(async {
            let mut uni = conn.open_uni().await?;
            uni.write_all(bytes).await?;
            uni.finish()?;
            anyhow::Ok(())
        })
    }

    fn close_error(&self) -> Result<quinn::ConnectionError> {
        let conn = self.conn.clone();
        self.rt.block_on(async { tokio::time::timeout(WAIT, conn.closed()).await.context("connection not closed") })
    }

    /// How the server closed the connection (code, reason).
    fn closed(&self) -> Result<(u64, String)> {
        match self.close_error()? {
            quinn::ConnectionError::ApplicationClosed(c) => {
                Ok((c.error_code.into_inner(), String::from_utf8_lossy(&c.reason).into_owned()))
            }
            other => bail!("closed otherwise: {other}"),
        }
    }
}

fn server(ca: &ClusterCa) -> Result<Node> {
    node_with(ca, "coordinator", NetConfig { max_frame_bytes: MAX, ..fast_config() })
}

/// A raw peer past a successful hello, and its id on the server.
fn accepted(ca: &ClusterCa, server: &Node) -> Result<(RawPeer, PeerId)> {
    let hello = hello_bytes(PROTOCOL_VERSION, "worker-9");
    let mut peer = RawPeer::connect(ca, "worker-9", server.local_addr(), &hello)?;
    let (status, name) = peer.reply()?;
    assert_eq!((status, name.as_str()), (0, "coordinator"));
    let (id, name) = wait_connected(server)?;
    assert_eq!(name, "worker-9");
    Ok((peer, id))
}

#[test]
fn wrong_protocol_version_is_refused_naming_both() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let server = server(&ca)?;
    let hello = hello_bytes(99, "worker-9");
    let mut peer = RawPeer::connect(&ca, "worker-9", server.local_addr(), &hello)?;
    let (status, reason) = peer.reply()?;
    assert_eq!(status, 1, "{reason}");
    assert!(reason.contains(&format!("protocol {PROTOCOL_VERSION}")), "{reason}");
    assert!(reason.contains("protocol 99"), "{reason}");
    let (code, close_reason) = peer.closed()?;
    assert_eq!((code, close_reason), (2, reason));
    assert_no_connected(&server, Duration::from_millis(200))
}

#[test]
fn garbage_hello_is_refused() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let server = server(&ca)?;
    let mut peer = RawPeer::connect(&ca, "worker-9", server.local_addr(), b"GET / HTTP/1.1")?;
    let (status, reason) = peer.reply()?;
    assert_eq!(status, 1);
    assert!(reason.contains("not a baton node"), "{reason}");
    assert_no_connected(&server, Duration::from_millis(200))
}

#[test]
fn hello_with_another_nodes_name_is_refused() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let server = server(&ca)?;
    let hello = hello_bytes(PROTOCOL_VERSION, "worker-0");
    let mut peer = RawPeer::connect(&ca, "worker-9", server.local_addr(), &hello)?;
    let (status, reason) = peer.reply()?;
    assert_eq!(status, 1);
    assert!(reason.contains("issued for another node"), "{reason}");
    assert_no_connected(&server, Duration::from_millis(200))
}

fn assert_oversize_disconnect(server: &Node, peer: &RawPeer, id: PeerId, size: u64) -> Result<()> {
    let reason = wait_disconnected(server, id, WAIT)?;
    assert!(reason.contains(&size.to_string()) && reason.contains(&MAX.to_string()), "{reason}");
    let (code, peer_reason) = peer.closed()?;
    assert_eq!(code, 1);
    assert!(peer_reason.contains(&size.to_string()), "{peer_reason}");
    Ok(())
}

#[test]
fn oversized_control_frame_disconnects() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let server = server(&ca)?;
    let (mut peer, id) = accepted(&ca, &server)?;
    peer.write(&raw::encode_frame(b"fine"))?;
    wait_for(&server, WAIT, |e| matches!(e, Event::Message { .. }).then_some(()))?;
    peer.write(&raw::encode_header(MAX + 1))?;
    assert_oversize_disconnect(&server, &peer, id, MAX as u64 + 1)
}

#[test]
fn oversized_bulk_frame_disconnects_without_allocating() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let server = server(&ca)?;
    let (mut peer, id) = accepted(&ca, &server)?;
    // Allocating this would abort the process, so passing proves the order.
    peer.bulk(&u64::MAX.to_le_bytes())?;
    assert_oversize_disconnect(&server, &peer, id, u64::MAX)
}

#[test]
fn truncated_bulk_frame_disconnects() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let server = server(&ca)?;
    let (mut peer, id) = accepted(&ca, &server)?;
    let mut partial = raw::encode_header(1000).to_vec();
    partial.extend_from_slice(&[1u8; 10]);
    peer.bulk(&partial)?;
    let reason = wait_disconnected(&server, id, WAIT)?;
    assert!(reason.contains("truncated") && reason.contains("18 of 1008"), "{reason}");
    assert!(peer.closed()?.1.contains("truncated"));
    Ok(())
}

#[test]
fn truncated_control_frame_disconnects() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let server = server(&ca)?;
    let (mut peer, id) = accepted(&ca, &server)?;
    let mut partial = raw::encode_header(100).to_vec();
    partial.extend_from_slice(b"short");
    peer.write(&partial)?;
    peer.send.finish()?;
    let reason = wait_disconnected(&server, id, WAIT)?;
    assert!(reason.contains("truncated") && reason.contains("13 of 108"), "{reason}");
    Ok(())
}

#[test]
fn two_frames_on_one_bulk_stream_disconnect() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let server = server(&ca)?;
    let (mut peer, id) = accepted(&ca, &server)?;
    let mut two = raw::encode_frame(b"one");
    two.extend(raw::encode_frame(b"two"));
    peer.bulk(&two)?;
    let reason = wait_disconnected(&server, id, WAIT)?;
    assert!(reason.contains("more than one frame"), "{reason}");
    Ok(())
}

/// A client that trusts our CA but presents no certificate at all.
fn anonymous_client(ca: &ClusterCa) -> Result<quinn::ClientConfig> {
    let dir = tempfile::tempdir()?;
    ca.save(dir.path())?;
    let ca_der = CertificateDer::from_pem_file(dir.path().join("ca.pem"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"baton".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

#[test]
fn client_without_certificate_is_refused() -> Result<()> {
    let ca = ClusterCa::generate("t")?;
    let server = server(&ca)?;
    let config = anonymous_client(&ca)?;
    let frame = raw::encode_frame(&hello_bytes(PROTOCOL_VERSION, "worker-9"));
    let addr = server.local_addr();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let error = rt.block_on(async {
        let endpoint = quinn::Endpoint::client(local())?;
        // The client may see the handshake succeed (CRATES.md)...
        let conn = match endpoint.connect_with(config, addr, raw::SERVER_NAME)?.await {
            Ok(conn) => conn,
            Err(e) => return anyhow::Ok(e),
        };
        // ...but no reply to the hello ever comes.
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(&frame).await?;
            let mut header = [0u8; 8];
            recv.read_exact(&mut header).await?;
            anyhow::Ok(())
        };
        assert!(exchange.await.is_err(), "the server answered an anonymous client");
        Ok(tokio::time::timeout(WAIT, conn.closed()).await?)
    })?;
    match error {
        quinn::ConnectionError::ConnectionClosed(c) => {
            let code = u64::from(c.error_code);
            assert!((0x100..0x200).contains(&code), "not a TLS alert: {c}");
        }
        other => bail!("closed otherwise: {other}"),
    }
    assert_no_connected(&server, Duration::from_millis(200))
}
