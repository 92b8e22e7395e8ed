//! A bounded fuzz run on stable Rust: every target in `fuzz_targets` gets
//! random bytes and mutations (bit flips, truncation, duplication, splices,
//! interesting bytes) of the seed corpus in `fuzz/corpus/<target>/`, for a
//! fixed time. A panic fails the test and prints the input, which then
//! belongs in the corpus and in a regression test. Longer, coverage-guided
//! runs: `cargo +nightly fuzz run <target>` in `fuzz/` (see fuzz/README.md).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use switchyard::fuzz_targets::TARGETS;

const BUDGET_PER_TARGET: Duration = Duration::from_millis(1500);

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(!seeds.is_empty(), "no seed corpus in {}", dir.display());
    seeds.sort();
    seeds
}

fn mutate(rng: &mut SmallRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.random_range(0..seeds.len())].clone();
    for _ in 0..rng.random_range(1..6) {
        match rng.random_range(0..7) {
            0 if !data.is_empty() => {
                let i = rng.random_range(0..data.len());
                data[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !data.is_empty() => data.truncate(rng.random_range(0..data.len())),
            2 if !data.is_empty() => {
                let start = rng.random_range(0..data.len());
                let end = rng.random_range(start..=data.len());
                let piece = data[start..end].to_vec();
                let at = rng.random_range(0..=data.len());
                data.splice(at..at, piece);
            }
            3 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                let cut = rng.random_range(0..=other.len());
                data.extend_from_slice(&other[cut..]);
            }
            4 if !data.is_empty() => {
                let i = rng.random_range(0..data.len());
                data[i] = *[
                    b'[', b']', b'{', b'}', b'"', b'-', b'9', 0, 0xff, b':', b',',
                ]
                .get(rng.random_range(0..11))
                .unwrap();
            }
            5 => {
                data = (0..rng.random_range(0..256))
                    .map(|_| rng.random())
                    .collect()
            }
            _ => {}
        }
    }
    data
}

#[test]
fn every_target_survives_random_and_mutated_inputs() {
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    for (name, target) in TARGETS {
        let seeds = corpus(name);
        let started = Instant::now();
        let mut runs = 0u64;
        while started.elapsed() < BUDGET_PER_TARGET {
            let input = mutate(&mut rng, &seeds);
            let outcome = std::panic::catch_unwind(|| target(&input));
            assert!(
                outcome.is_ok(),
                "{name} panicked on input (hex): {}",
                hex(&input)
            );
            runs += 1;
        }
        for seed in &seeds {
            target(seed);
        }
        eprintln!("{name}: {runs} inputs");
        assert!(runs > 100, "{name}: only {runs} inputs in the time budget");
    }
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}
