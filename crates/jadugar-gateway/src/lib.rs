//! Jadugar gateway.
