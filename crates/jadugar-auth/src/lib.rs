//! Jadugar auth.
