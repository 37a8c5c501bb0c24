//! No build step of our own; this script exists so the `bindgen` build-dependency in
//! `Cargo.toml` (a feature-unification fix for espeakng-sys, see there) is part of the
//! build graph.
fn main() {}
