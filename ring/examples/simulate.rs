//! Prints the claim's balance and movement figures for a few ring sizes and member counts.
//!
//! `cargo run --release -p chorus-ring --example simulate [-- --n 3 --ring-sizes 64,256 --nodes 3,5,10]`

use chorus_ring::analysis::report;

fn main() {
    let mut n = 3;
    let mut ring_sizes = vec![64, 256, 1024];
    let mut nodes = vec![3, 5, 10, 50, 100];
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let list = || -> Vec<usize> {
            value
                .split(',')
                .map(|v| v.trim().parse().unwrap_or_else(|_| usage(&value)))
                .collect()
        };
        match flag.as_str() {
            "--n" => n = value.parse().unwrap_or_else(|_| usage(&value)),
            "--ring-sizes" => ring_sizes = list().into_iter().map(|v| v as u32).collect(),
            "--nodes" => nodes = list(),
            _ => usage(&flag),
        }
    }
    for ring_size in ring_sizes {
        println!("{}", report(ring_size, n, &nodes));
    }
}

fn usage(bad: &str) -> ! {
    eprintln!(
        "bad argument {bad:?}; usage: simulate [--n N] [--ring-sizes 64,256] [--nodes 3,5,10]"
    );
    std::process::exit(2)
}
