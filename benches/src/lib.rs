//! Shared pieces of the Jadugar benchmarks.
