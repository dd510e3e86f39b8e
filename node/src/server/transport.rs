//! Node-to-node transport over QUIC (quinn + rustls with the `ring` provider).
//!
//! One UDP endpoint per node both listens and dials, so a peer's connection comes from its
//! `--listen` address. One connection per peer is kept and reused; a request/response is
//! one bidirectional stream (request bytes, finish, response bytes, finish), a one-way
//! message (gossip) is one unidirectional stream. Mutual TLS against the cluster CA
//! authenticates both ends. This module moves opaque bytes; it knows nothing of messages
//! (see `rpc`) or of what a node does with them (see `server`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::PoisonError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ClientConfig, Connection, Endpoint, ServerConfig, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::server::certs::{Credential, NODE_SERVER_NAME};

/// Largest message accepted on a stream (see `rpc::MAX_MESSAGE_BYTES`, which the object
/// limits are derived from).
pub const MAX_MESSAGE_BYTES: usize = chorus_core::rpc::MAX_MESSAGE_BYTES;
/// Concurrent requests in flight on one connection, per direction; further ones wait for a
/// slot (bounded by their own timeout), which is the transport's back-pressure.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// After a failed connect, calls to that peer fail fast for this long, doubling up to the max.
/// A handshake takes milliseconds between live nodes; a dead peer never answers, and
/// without this bound a dial would wait for the idle timeout and use up the request's
/// whole budget, leaving none to try the next replica.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const ALPN: &[u8] = b"chorus/1";

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot reach {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("{0} is backing off after a failed connect")]
    BackingOff(SocketAddr),
    /// Opening a stream failed: nothing of the message was written.
    #[error("cannot open a stream to {0}: {1}")]
    Open(SocketAddr, String),
    #[error("stream to {0} failed: {1}")]
    Stream(SocketAddr, String),
    #[error("request to {0} timed out")]
    Timeout(SocketAddr),
    /// The time ran out while connecting, before a stream was opened.
    #[error("request to {0} timed out before it was sent")]
    TimeoutUnsent(SocketAddr),
}

impl TransportError {
    /// Whether the message certainly never left this node (no connection, or no stream):
    /// the peer cannot have acted on it.
    pub fn certainly_not_sent(&self) -> bool {
        matches!(
            self,
            TransportError::Connect(..)
                | TransportError::BackingOff(_)
                | TransportError::Open(..)
                | TransportError::TimeoutUnsent(_)
        )
    }
}

/// How this node authenticates its peers.
pub enum Security {
    /// Mutual TLS: both ends present a certificate signed by the cluster CA.
    Cluster(Credential),
    /// No authentication (`--insecure`): any certificate is accepted, none is asked for.
    Insecure,
}

/// Receives what peers send. Implemented by the node server.
pub trait Handler: Send + Sync + 'static {
    /// Answers a request; the returned bytes go back on the same stream.
    fn request(
        &self,
        from: SocketAddr,
        body: Vec<u8>,
    ) -> impl std::future::Future<Output = Vec<u8>> + Send;
    /// Takes a one-way message (gossip).
    fn oneway(
        &self,
        from: SocketAddr,
        body: Vec<u8>,
    ) -> impl std::future::Future<Output = ()> + Send;
}

#[derive(Default)]
struct PeerState {
    connection: Option<Connection>,
    retry_after: Option<Instant>,
    backoff: Duration,
}

pub struct QuicTransport {
    endpoint: Endpoint,
    peers: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<PeerState>>>>,
    /// The connection each peer address last opened to us. A peer reuses its connection,
    /// so a second one from the same address while the first still looks open means the
    /// peer lost its state (it restarted): our own connection to it is then dead too.
    incoming: Mutex<HashMap<SocketAddr, Connection>>,
}

impl QuicTransport {
    /// Binds the UDP endpoint. Must run inside a tokio runtime.
    pub fn bind(addr: SocketAddr, security: Security) -> Result<Arc<Self>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (server, client) = match security {
            Security::Cluster(credential) => mutual_tls(provider, credential)?,
            Security::Insecure => insecure_tls(provider)?,
        };
        let mut endpoint = Endpoint::server(server, addr)
            .map_err(|e| format!("cannot listen on {addr} (UDP): {e}"))?;
        endpoint.set_default_client_config(client);
        Ok(Arc::new(QuicTransport {
            endpoint,
            peers: Mutex::new(HashMap::new()),
            incoming: Mutex::new(HashMap::new()),
        }))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// Accepts connections until the endpoint closes, handing every stream to `handler`.
    pub async fn serve<H: Handler>(self: Arc<Self>, handler: Arc<H>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let handler = handler.clone();
            let transport = self.clone();
            tokio::spawn(async move {
                let connection = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!("refused an incoming connection: {e}");
                        return;
                    }
                };
                let from = connection.remote_address();
                if transport.replaces_live_connection(from, &connection) {
                    // Not awaited here: the slot may be busy with a dial, and this
                    // connection's streams must be served meanwhile.
                    let transport = transport.clone();
                    tokio::spawn(async move { transport.drop_outgoing(from).await });
                }
                serve_connection(connection.clone(), handler).await;
                let mut incoming = transport
                    .incoming
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if incoming
                    .get(&from)
                    .is_some_and(|c| c.stable_id() == connection.stable_id())
                {
                    incoming.remove(&from);
                }
            });
        }
    }

    /// Sends `body` and waits for the response, all within `timeout`.
    pub async fn request(
        &self,
        to: SocketAddr,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        // Whether a stream was opened, so a byte of the request may have gone out: a
        // timeout before that is a request certainly not sent.
        let opened = AtomicBool::new(false);
        let exchange = async {
            #[cfg(feature = "fault-injection")]
            crate::server::fault::delay_message().await;
            let connection = self.connection(to).await?;
            let stream_error =
                |e: &dyn std::fmt::Display| TransportError::Stream(to, e.to_string());
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| {
                self.forget(to, &connection);
                TransportError::Open(to, e.to_string())
            })?;
            opened.store(true, Ordering::Release);
            send.write_all(body).await.map_err(|e| stream_error(&e))?;
            send.finish().map_err(|e| stream_error(&e))?;
            recv.read_to_end(MAX_MESSAGE_BYTES)
                .await
                .map_err(|e| stream_error(&e))
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| {
            match opened.load(Ordering::Acquire) {
                true => TransportError::Timeout(to),
                false => TransportError::TimeoutUnsent(to),
            }
        })?
    }

    /// Sends a one-way message; delivery is best effort (gossip repeats itself).
    pub async fn send(
        &self,
        to: SocketAddr,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let exchange = async {
            #[cfg(feature = "fault-injection")]
            crate::server::fault::delay_message().await;
            let connection = self.connection(to).await?;
            let stream_error =
                |e: &dyn std::fmt::Display| TransportError::Stream(to, e.to_string());
            let mut send = connection.open_uni().await.map_err(|e| {
                self.forget(to, &connection);
                TransportError::Open(to, e.to_string())
            })?;
            send.write_all(body).await.map_err(|e| stream_error(&e))?;
            send.finish().map_err(|e| stream_error(&e))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| TransportError::Timeout(to))?
    }

    /// Closes every connection and the endpoint, telling peers we are gone.
    pub async fn close(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    /// Notes a new connection from `from`; true when the previous one from that address
    /// still looked open. The peer then restarted (same address, new process): its old
    /// connection, and ours to it, lead to a dead process and would swallow requests until
    /// they idle out (4 s without packets). The old incoming one is closed here; the
    /// caller drops ours (`drop_outgoing`).
    fn replaces_live_connection(&self, from: SocketAddr, connection: &Connection) -> bool {
        let previous = self
            .incoming
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(from, connection.clone());
        match previous {
            Some(previous)
                if previous.stable_id() != connection.stable_id()
                    && previous.close_reason().is_none() =>
            {
                previous.close(VarInt::from_u32(0), b"peer restarted");
                true
            }
            _ => false,
        }
    }

    /// Closes our connection to `to` and clears its backoff, so the next call dials afresh.
    async fn drop_outgoing(&self, to: SocketAddr) {
        let slot = self.slot(to);
        let mut state = slot.lock().await;
        if let Some(stale) = state.connection.take() {
            stale.close(VarInt::from_u32(0), b"peer restarted");
        }
        state.retry_after = None;
        state.backoff = Duration::ZERO;
        tracing::info!(peer = %to, "a peer reconnected (restarted?): dropped the connections to its old incarnation");
    }

    fn slot(&self, to: SocketAddr) -> Arc<tokio::sync::Mutex<PeerState>> {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(to)
            .or_default()
            .clone()
    }

    fn forget(&self, to: SocketAddr, dead: &Connection) {
        if let Ok(mut state) = self.slot(to).try_lock() {
            if state
                .connection
                .as_ref()
                .is_some_and(|c| c.stable_id() == dead.stable_id())
            {
                state.connection = None;
            }
        }
    }

    /// The live connection to `to`, dialing when there is none. Concurrent callers share one
    /// dial (the per-peer lock) instead of racing to open several connections.
    async fn connection(&self, to: SocketAddr) -> Result<Connection, TransportError> {
        let slot = self.slot(to);
        let mut state = slot.lock().await;
        if let Some(connection) = &state.connection {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
            state.connection = None;
        }
        if state.retry_after.is_some_and(|t| Instant::now() < t) {
            return Err(TransportError::BackingOff(to));
        }
        let dial = async {
            self.endpoint
                .connect(to, NODE_SERVER_NAME)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        let dial = async {
            tokio::time::timeout(CONNECT_TIMEOUT, dial)
                .await
                .unwrap_or_else(|_| Err(format!("no handshake within {CONNECT_TIMEOUT:?}")))
        };
        match dial.await {
            Ok(connection) => {
                state.connection = Some(connection.clone());
                state.retry_after = None;
                state.backoff = Duration::ZERO;
                Ok(connection)
            }
            Err(e) => {
                state.backoff = (state.backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
                state.retry_after = Some(Instant::now() + state.backoff);
                Err(TransportError::Connect(to, e))
            }
        }
    }
}

async fn serve_connection<H: Handler>(connection: Connection, handler: Arc<H>) {
    let from = connection.remote_address();
    loop {
        tokio::select! {
            bi = connection.accept_bi() => {
                let Ok((mut send, mut recv)) = bi else { return };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let Ok(body) = recv.read_to_end(MAX_MESSAGE_BYTES).await else { return };
                    let response = handler.request(from, body).await;
                    if send.write_all(&response).await.is_ok() {
                        let _ = send.finish();
                    }
                });
            }
            uni = connection.accept_uni() => {
                let Ok(mut recv) = uni else { return };
                let handler = handler.clone();
                tokio::spawn(async move {
                    if let Ok(body) = recv.read_to_end(MAX_MESSAGE_BYTES).await {
                        handler.oneway(from, body).await;
                    }
                });
            }
        }
    }
}

fn transport_config() -> Arc<TransportConfig> {
    let mut config = TransportConfig::default();
    config.max_concurrent_bidi_streams(VarInt::from_u32(MAX_CONCURRENT_STREAMS));
    config.max_concurrent_uni_streams(VarInt::from_u32(MAX_CONCURRENT_STREAMS));
    config.keep_alive_interval(Some(Duration::from_secs(1)));
    // A dead, paused or partitioned peer's connection is dropped after this (four missed
    // keep-alives), and redialed later. Short, because until it is dropped a write to a
    // killed peer cannot be told from one to a slow peer and waits for its timeout; once
    // it is, calls fail as not sent and the coordinator moves on to the next replica.
    config.max_idle_timeout(Some(VarInt::from_u32(4_000).into()));
    Arc::new(config)
}

fn mutual_tls(
    provider: Arc<CryptoProvider>,
    credential: Credential,
) -> Result<(ServerConfig, ClientConfig), String> {
    let mut roots = RootCertStore::empty();
    roots
        .add(credential.ca.clone())
        .map_err(|e| format!("invalid cluster CA certificate: {e}"))?;
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| format!("cannot build the client verifier: {e}"))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![credential.cert.clone()], credential.key.clone_key())
        .map_err(|e| format!("invalid node certificate or key: {e}"))?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![credential.cert], credential.key)
        .map_err(|e| format!("invalid node certificate or key: {e}"))?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    quic_configs(server, client)
}

fn insecure_tls(provider: Arc<CryptoProvider>) -> Result<(ServerConfig, ClientConfig), String> {
    let generated = rcgen::generate_simple_self_signed(vec![NODE_SERVER_NAME.to_string()])
        .map_err(|e| format!("cannot generate a certificate: {e}"))?;
    let cert = CertificateDer::from(generated.cert.der().to_vec());
    let key =
        PrivateKeyDer::try_from(generated.key_pair.serialize_der()).map_err(|e| e.to_string())?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| e.to_string())?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];
    quic_configs(server, client)
}

fn quic_configs(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
) -> Result<(ServerConfig, ClientConfig), String> {
    let server_crypto = QuicServerConfig::try_from(server).map_err(|e| e.to_string())?;
    let mut server_config = ServerConfig::with_crypto(Arc::new(server_crypto));
    server_config.transport_config(transport_config());
    let client_crypto = QuicClientConfig::try_from(client).map_err(|e| e.to_string())?;
    let mut client_config = ClientConfig::new(Arc::new(client_crypto));
    client_config.transport_config(transport_config());
    Ok((server_config, client_config))
}

/// `--insecure` only: accepts any server certificate (signatures are still checked, so the
/// TLS session is encrypted, but the peer is not authenticated).
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
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

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Handler for Echo {
        async fn request(&self, _from: SocketAddr, mut body: Vec<u8>) -> Vec<u8> {
            body.reverse();
            body
        }
        async fn oneway(&self, _from: SocketAddr, _body: Vec<u8>) {}
    }

    fn credential() -> Credential {
        let dir = tempfile::tempdir().unwrap();
        crate::server::certs::init(dir.path(), false).unwrap();
        crate::server::certs::load(dir.path()).unwrap()
    }

    #[tokio::test]
    async fn members_talk_and_strangers_are_refused() {
        let cluster = credential();
        let server = QuicTransport::bind(
            "127.0.0.1:0".parse().unwrap(),
            Security::Cluster(cluster.clone()),
        )
        .unwrap();
        tokio::spawn(server.clone().serve(Arc::new(Echo)));
        let addr = server.local_addr();
        let timeout = Duration::from_secs(10);

        let member =
            QuicTransport::bind("127.0.0.1:0".parse().unwrap(), Security::Cluster(cluster))
                .unwrap();
        assert_eq!(member.request(addr, b"abc", timeout).await.unwrap(), b"cba");
        // The connection is reused: a second request does not dial again.
        assert_eq!(member.request(addr, b"xy", timeout).await.unwrap(), b"yx");
        assert_eq!(member.peers.lock().unwrap().len(), 1);

        let stranger = QuicTransport::bind(
            "127.0.0.1:0".parse().unwrap(),
            Security::Cluster(credential()),
        )
        .unwrap();
        assert!(
            stranger.request(addr, b"abc", timeout).await.is_err(),
            "another CA must not get in"
        );
        let insecure =
            QuicTransport::bind("127.0.0.1:0".parse().unwrap(), Security::Insecure).unwrap();
        assert!(
            insecure.request(addr, b"abc", timeout).await.is_err(),
            "a node without a certificate must not get in"
        );
    }
}
