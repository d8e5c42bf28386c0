//! The `jadugar` binary.
fn main() {}
