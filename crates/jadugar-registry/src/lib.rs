//! Jadugar registry.
