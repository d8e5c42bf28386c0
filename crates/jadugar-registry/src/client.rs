//! Client.
/// Client.
#[derive(Debug)]
pub struct RegistryClient;
