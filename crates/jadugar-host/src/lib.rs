//! The Jadugar reference host.
