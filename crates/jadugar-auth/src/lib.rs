//! Jadugar auth.

pub mod config;
pub mod error;
pub mod http;
pub mod layer;
mod jwt;
pub mod model;
pub mod password;
pub mod service;
pub mod store;
mod throttle;

pub use config::{Config, ExternalIssuer};
pub use error::Error;
pub use service::AuthService;
