//! The scenario's event log: every network, fault, client and check event is hashed (blake3)
//! in order, so two runs of one seed can be compared by a single digest; with `verbose`
//! each event is also printed with its virtual time.

use std::sync::Mutex;

use tokio::time::Instant;

pub struct Trace {
    hasher: Mutex<blake3::Hasher>,
    events: Mutex<u64>,
    start: Instant,
    pub verbose: bool,
}

impl Trace {
    pub fn new(verbose: bool) -> Trace {
        Trace {
            hasher: Mutex::new(blake3::Hasher::new()),
            events: Mutex::new(0),
            start: Instant::now(),
            verbose,
        }
    }

    /// Virtual milliseconds since the scenario started.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn log(&self, line: String) {
        let t = self.now_ms();
        {
            let mut h = self.hasher.lock().unwrap_or_else(|p| p.into_inner());
            h.update(&t.to_le_bytes());
            h.update(line.as_bytes());
            h.update(b"\n");
        }
        *self.events.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        if self.verbose {
            println!("[{:>7}.{:03}] {line}", t / 1000, t % 1000);
        }
    }

    pub fn events(&self) -> u64 {
        *self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn digest(&self) -> String {
        self.hasher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .finalize()
            .to_hex()
            .to_string()
    }
}
