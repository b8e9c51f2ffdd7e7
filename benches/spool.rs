//! `make bench` (spool): the spool's steady state as a relay sees it.
//!
//! 16 threads each commit a 4 KiB message and remove it again, as fast as
//! the disk allows, once with the default spare files (a finished file is
//! written over by the next message) and once with `limit spare-files 0`
//! (a new file per message, the finished one deleted); twice each,
//! alternating, 4 s per run. Every commit is fsynced as for a 250.

mod common;

use std::time::{Duration, Instant};

use postern::spool::{SPARES, Spool};

const RUN: Duration = Duration::from_secs(4);
const THREADS: usize = 16;

fn cycles(spares: usize) -> f64 {
    let dir = common::Scratch::new("4G");
    let s = Spool::open(dir.path()).unwrap().with_spares(spares);
    s.recover().unwrap();
    let t0 = Instant::now();
    let hs: Vec<_> = (0..THREADS)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                let body = vec![b'x'; 4096];
                let mut n = 0u64;
                // Bounded by RUN.
                while t0.elapsed() < RUN {
                    let mut env = common::envelope("load@bench.test", "sink@far.test", "out");
                    let id = s.submit(&body, &mut env).unwrap();
                    s.remove(&[&id]).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let n: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
    n as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    let mut with = Vec::new();
    let mut without = Vec::new();
    for _ in 0..2 {
        with.push(cycles(SPARES));
        without.push(cycles(0));
    }
    let show = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let line = format!(
        "(i) spool steady state, {THREADS} threads committing and removing 4 KiB messages: \
         {} cycles/s with {SPARES} spare files, {} without (limit spare-files 0).",
        show(&with),
        show(&without)
    );
    println!("{line}");
    common::set_result_line("(i) spool", &line);
}
