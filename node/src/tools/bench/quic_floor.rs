//! `chorus bench --target quic-floor`: the floor under every replicated operation, measured
//! on this machine. One process runs a chorus QUIC transport server (mutual TLS, as between
//! nodes) that echoes each request, and a client that keeps `--concurrency` requests in
//! flight over one connection, one bidirectional stream per request, exactly as a
//! coordinator calls a replica. It reports calls per second, latency percentiles and the
//! CPU time of the whole process (both ends) per call, for comparison with the CPU a
//! replicated write costs. It knows nothing of storage or messages.

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

pub fn run(
    duration: Duration,
    warmup: Duration,
    concurrency: usize,
    body_size: usize,
    json_out: bool,
) -> CliResult {
    let dir = std::env::temp_dir().join(format!("chorus-quic-floor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    crate::server::certs::init(&dir, false).map_err(CliError::failed)?;
    let credential = crate::server::certs::load(&dir).map_err(CliError::failed);
    let _ = std::fs::remove_dir_all(&dir);
    let credential = credential?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(async move {
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let server = QuicTransport::bind(loopback, Security::Cluster(credential.clone()))
            .map_err(CliError::failed)?;
        tokio::spawn(server.clone().serve(Arc::new(Echo)));
        let addr = server.local_addr();
        let client = QuicTransport::bind(loopback, Security::Cluster(credential))
            .map_err(CliError::failed)?;
        let body = vec![b'x'; body_size];
        client
            .request(addr, &body, Duration::from_secs(10))
            .await
            .map_err(|e| CliError::failed(e.to_string()))?;

        let histogram = Arc::new(Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        ));
        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (client, body, histogram, measuring, stop) = (
                client.clone(),
                body.clone(),
                histogram.clone(),
                measuring.clone(),
                stop.clone(),
            );
            tasks.spawn(async move {
                let mut errors = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    match client.request(addr, &body, Duration::from_secs(10)).await {
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
            });
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
        client.close().await;
        server.close().await;
        let h = histogram
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Ok::<_, CliError>((h, cpu1 - cpu0, t1 - t0, errors))
    });
    let (h, cpu, elapsed, errors) = result?;
    let calls = h.len();
    if calls == 0 {
        return Err(CliError::failed("no QUIC call completed"));
    }
    let per_s = calls as f64 / elapsed.as_secs_f64();
    let cpu_us = cpu.as_secs_f64() * 1e6 / calls as f64;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    if json_out {
        println!(
            "{}",
            json!({"target": "quic-floor", "concurrency": concurrency, "body_bytes": body_size, "duration_s": elapsed.as_secs_f64(),
                   "calls_per_s": per_s, "cpu_us_per_call": cpu_us, "p50_ms": ms(0.5), "p99_ms": ms(0.99), "errors": errors})
        );
    } else {
        println!("quic floor: {concurrency} concurrent request/response calls of {body_size} B over one mutual-TLS QUIC connection (both ends in this process)");
        println!("  {per_s:.0} calls/s, {cpu_us:.1} us of CPU per call, p50 {:.3} ms, p99 {:.3} ms, {errors} errors", ms(0.5), ms(0.99));
    }
    Ok(())
}
