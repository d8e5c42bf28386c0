//! Jadugar tracking.
