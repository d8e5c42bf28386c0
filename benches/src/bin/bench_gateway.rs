//! Placeholder until the gateway crate exposes its API.
fn main() {}
