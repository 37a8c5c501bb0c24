//! Criterion benchmarks for callbot live beside this file, one per measured target
//! (see `Cargo.toml`). `cargo bench --no-run --workspace` builds them all in CI;
//! `cargo bench -p callbot-benches --bench NAME` runs one.
