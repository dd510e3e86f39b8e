//! `chorus bench --target quic-floor` and `--target bare-quinn`: the floor under every
//! replicated operation, measured on this machine. One process runs a server that echoes
//! each request and a client that keeps `--concurrency` requests in flight over one
//! connection, one bidirectional stream per request, exactly as a coordinator calls a
//! replica. `quic-floor` goes through chorus's QUIC transport (mutual TLS, its framing and
//! connection handling, as between nodes); `bare-quinn` through quinn alone (server-only
//! TLS, quinn's defaults), so a report shows what chorus's transport adds to quinn. Both
//! report calls per second, latency percentiles and the CPU time of the whole process (both
//! ends) per call. It knows nothing of storage or messages.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::PoisonError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::time::Instant;

use crate::cli::{CliError, CliResult};
use crate::server::transport::{Handler, QuicTransport, Security};

struct Echo;

impl Handler for Echo {
    async fn request(&self, _from: SocketAddr, body: Vec<u8>) -> Vec<u8> {
        body
    }
    async fn oneway(&self, _from: SocketAddr, _body: Vec<u8>) {}
}

/// User plus system CPU time of this process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Which transport a floor measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Floor {
    /// chorus's `QuicTransport`, as between nodes.
    Chorus,
    /// quinn alone.
    BareQuinn,
}

impl Floor {
    fn target(self) -> &'static str {
        match self {
            Floor::Chorus => "quic-floor",
            Floor::BareQuinn => "bare-quinn",
        }
    }
}

/// The client side of one floor: one connection, one bidirectional stream per call.
#[derive(Clone)]
enum Caller {
    Chorus(Arc<QuicTransport>, SocketAddr),
    BareQuinn(quinn::Connection),
}

impl Caller {
    async fn call(&self, body: &[u8]) -> Result<(), String> {
        match self {
            Caller::Chorus(client, addr) => client
                .request(*addr, body, Duration::from_secs(10))
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Caller::BareQuinn(connection) => {
                let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
                send.write_all(body).await.map_err(|e| e.to_string())?;
                send.finish().map_err(|e| e.to_string())?;
                recv.read_to_end(body.len() + 64)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// What must outlive the measurement: the servers and endpoints, closed at the end.
enum Ends {
    Chorus(Arc<QuicTransport>, Arc<QuicTransport>),
    BareQuinn(quinn::Endpoint, quinn::Endpoint),
}

impl Ends {
    async fn close(self) {
        match self {
            Ends::Chorus(client, server) => {
                client.close().await;
                server.close().await;
            }
            Ends::BareQuinn(client, server) => {
                client.close(0u32.into(), b"done");
                server.close(0u32.into(), b"done");
                client.wait_idle().await;
            }
        }
    }
}

async fn chorus_ends() -> Result<(Caller, Ends), CliError> {
    let dir = std::env::temp_dir().join(format!("chorus-quic-floor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    crate::server::certs::init(&dir, false).map_err(CliError::failed)?;
    let credential = crate::server::certs::load(&dir).map_err(CliError::failed);
    let _ = std::fs::remove_dir_all(&dir);
    let credential = credential?;
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    let server = QuicTransport::bind(loopback, Security::Cluster(credential.clone()))
        .map_err(CliError::failed)?;
    tokio::spawn(server.clone().serve(Arc::new(Echo)));
    let addr = server.local_addr();
    let client =
        QuicTransport::bind(loopback, Security::Cluster(credential)).map_err(CliError::failed)?;
    Ok((
        Caller::Chorus(client.clone(), addr),
        Ends::Chorus(client, server),
    ))
}

/// A quinn server with a self-signed certificate that echoes every bidirectional stream,
/// and a client endpoint that trusts exactly that certificate.
async fn bare_quinn_ends(concurrency: usize, body_size: usize) -> Result<(Caller, Ends), CliError> {
    let failed = |what: &str, e: String| CliError::failed(format!("bare quinn: {what}: {e}"));
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .map_err(|e| failed("certificate", e.to_string()))?;
    let cert = rustls::pki_types::CertificateDer::from(generated.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::try_from(generated.key_pair.serialize_der())
        .map_err(|e| failed("key", e.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(concurrency.max(100) as u32));
    let transport = Arc::new(transport);
    let mut server_config = quinn::ServerConfig::with_single_cert(vec![cert.clone()], key)
        .map_err(|e| failed("server config", e.to_string()))?;
    server_config.transport_config(transport.clone());
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    let server = quinn::Endpoint::server(server_config, loopback)
        .map_err(|e| failed("bind", e.to_string()))?;
    let addr = server
        .local_addr()
        .map_err(|e| failed("address", e.to_string()))?;
    tokio::spawn(echo_streams(server.clone(), body_size + 64));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).map_err(|e| failed("root", e.to_string()))?;
    let mut client_config = quinn::ClientConfig::with_root_certificates(Arc::new(roots))
        .map_err(|e| failed("client config", e.to_string()))?;
    client_config.transport_config(transport);
    let mut client =
        quinn::Endpoint::client(loopback).map_err(|e| failed("bind", e.to_string()))?;
    client.set_default_client_config(client_config);
    let connection = client
        .connect(addr, "localhost")
        .map_err(|e| failed("connect", e.to_string()))?
        .await
        .map_err(|e| failed("handshake", e.to_string()))?;
    Ok((
        Caller::BareQuinn(connection),
        Ends::BareQuinn(client, server),
    ))
}

async fn echo_streams(server: quinn::Endpoint, limit: usize) {
    while let Some(incoming) = server.accept().await {
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                tokio::spawn(async move {
                    if let Ok(body) = recv.read_to_end(limit).await {
                        let _ = send.write_all(&body).await;
                        let _ = send.finish();
                    }
                });
            }
        });
    }
}

pub fn run(
    floor: Floor,
    duration: Duration,
    warmup: Duration,
    concurrency: usize,
    body_size: usize,
    json_out: bool,
) -> CliResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(async move {
        let (client, ends) = match floor {
            Floor::Chorus => chorus_ends().await?,
            Floor::BareQuinn => bare_quinn_ends(concurrency, body_size).await?,
        };
        let body = vec![b'x'; body_size];
        client.call(&body).await.map_err(CliError::failed)?;
        let measured = measure(client, body, concurrency, warmup, duration).await;
        ends.close().await;
        Ok::<_, CliError>(measured)
    });
    let Measured {
        latency,
        cpu,
        elapsed,
        errors,
    } = result?;
    let calls = latency.len();
    if calls == 0 {
        return Err(CliError::failed("no QUIC call completed"));
    }
    let per_s = calls as f64 / elapsed.as_secs_f64();
    let cpu_us = cpu.as_secs_f64() * 1e6 / calls as f64;
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    if json_out {
        println!(
            "{}",
            json!({"target": floor.target(), "concurrency": concurrency, "body_bytes": body_size, "duration_s": elapsed.as_secs_f64(),
                   "calls_per_s": per_s, "cpu_us_per_call": cpu_us, "p50_ms": ms(0.5), "p99_ms": ms(0.99), "errors": errors})
        );
    } else {
        let over = match floor {
            Floor::Chorus => "chorus's mutual-TLS QUIC transport",
            Floor::BareQuinn => "quinn alone (server-only TLS, quinn's defaults)",
        };
        println!("{}: {concurrency} concurrent request/response calls of {body_size} B over one connection of {over} (both ends in this process)", floor.target());
        println!("  {per_s:.0} calls/s, {cpu_us:.1} us of CPU per call, p50 {:.3} ms, p99 {:.3} ms, {errors} errors", ms(0.5), ms(0.99));
    }
    Ok(())
}

/// What a measurement found.
struct Measured {
    /// Of the calls that succeeded while measuring, in microseconds.
    latency: Histogram<u64>,
    /// Of the whole process while measuring.
    cpu: Duration,
    elapsed: Duration,
    /// Calls that failed, warm-up included.
    errors: u64,
}

/// Keeps `concurrency` calls of `body` in flight through `client`: `warmup` unmeasured,
/// then `duration` measured.
async fn measure(
    client: Caller,
    body: Vec<u8>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Measured {
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
    ));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        tasks.spawn(call_until_stopped(
            client.clone(),
            body.clone(),
            histogram.clone(),
            measuring.clone(),
            stop.clone(),
        ));
    }
    tokio::time::sleep(warmup).await;
    let (cpu0, t0) = (cpu_time(), Instant::now());
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    measuring.store(false, Ordering::Relaxed);
    let (cpu1, t1) = (cpu_time(), Instant::now());
    stop.store(true, Ordering::Relaxed);
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        errors += r.unwrap_or(1);
    }
    let latency = histogram
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    Measured {
        latency,
        cpu: cpu1 - cpu0,
        elapsed: t1 - t0,
        errors,
    }
}

/// One caller: calls one after the other until `stop`, recording the latency of those
/// that succeed while `measuring`. Returns how many failed.
async fn call_until_stopped(
    client: Caller,
    body: Vec<u8>,
    histogram: Arc<Mutex<Histogram<u64>>>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut errors = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        match client.call(&body).await {
            Ok(_) if measuring.load(Ordering::Relaxed) => {
                let _ = histogram
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(sent.elapsed().as_micros().max(1) as u64);
            }
            Ok(_) => {}
            Err(_) => errors += 1,
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both floors complete calls end to end (`run` fails when none completed).
    #[test]
    fn both_floors_complete_calls() {
        for floor in [Floor::Chorus, Floor::BareQuinn] {
            let short = Duration::from_millis(200);
            run(floor, short, short, 4, 100, true).unwrap_or_else(|e| panic!("{floor:?}: {e:?}"));
        }
    }
}
