use chorus_gossip::sim::*;
fn main() {
    let wire = std::env::args().nth(1).as_deref() == Some("wire");
    let mut sim = Sim::with_cluster(SimConfig { check_wire: wire, ..SimConfig::jittery(51) }, 200, |c| { c.max_message_bytes = 4096; c.max_kv_bytes = 1024; });
    sim.run_for(30_000);
    println!("wire={wire} {:?} conv={}", sim.stats, sim.converged());
}
