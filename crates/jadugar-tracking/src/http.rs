//! The JSON HTTP API under `/v1/tracking`.
