//! `sim`: runs batches of seeded cluster simulations (being written).

fn main() {}
