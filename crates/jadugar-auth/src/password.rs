//! Password hashing with argon2id on a bounded blocking pool.

use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::rngs::OsRng;
use tokio::sync::Semaphore;

use crate::Error;

/// Hashes and verifies passwords with argon2id off the async runtime.
///
/// At most `concurrency` hashes run at once (a login storm queues here and
/// never occupies the whole blocking pool). Verifying against `None` hashes
/// a dummy so that unknown users cost the same time as wrong passwords.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    params: Params,
    permits: Arc<Semaphore>,
    dummy: Arc<OnceLock<String>>,
}

impl PasswordHasher {
    /// A hasher with argon2id `memory_kib`, `iterations`, parallelism 1.
    pub fn new(memory_kib: u32, iterations: u32, concurrency: usize) -> Result<Self, Error> {
        let params = Params::new(memory_kib, iterations, 1, None)
            .map_err(|e| Error::field("argon2", e.to_string()))?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy: Arc::new(OnceLock::new()),
        })
    }

    fn argon2(params: Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// The PHC string of a fresh hash of `password`.
    pub async fn hash(&self, password: String) -> Result<String, Error> {
        let params = self.params.clone();
        self.blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            Self::argon2(params)
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| Error::Internal(e.to_string()))
        })
        .await?
    }

    fn dummy_hash(&self) -> String {
        self.dummy
            .get_or_init(|| {
                let salt = SaltString::generate(&mut OsRng);
                Self::argon2(self.params.clone())
                    .hash_password(b"jadugar dummy password", &salt)
                    .map(|h| h.to_string())
                    .unwrap_or_default()
            })
            .clone()
    }

    /// Whether `password` matches `hash`. With `hash = None` (unknown user,
    /// no password set) a dummy hash is verified and `false` returned, in
    /// the same time as a real check.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, Error> {
        let this = self.clone();
        self.blocking(move || {
            let real = hash.is_some();
            let phc = hash.unwrap_or_else(|| this.dummy_hash());
            let matches = match PasswordHash::new(&phc) {
                Ok(parsed) => Self::argon2(this.params.clone())
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok(),
                Err(_) => {
                    // A corrupt stored hash: still spend the time.
                    let dummy = this.dummy_hash();
                    if let Ok(parsed) = PasswordHash::new(&dummy) {
                        let _ = Self::argon2(this.params.clone())
                            .verify_password(password.as_bytes(), &parsed);
                    }
                    false
                }
            };
            real && matches
        })
        .await
    }

    /// Computes the dummy hash now (else the first unknown-user login does).
    pub async fn warm_up(&self) -> Result<(), Error> {
        let this = self.clone();
        self.blocking(move || {
            this.dummy_hash();
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let hasher = PasswordHasher::new(1024, 1, 2).unwrap();
        let hash = hasher.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            hasher
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(!hasher.verify("wrong".into(), Some(hash)).await.unwrap());
        assert!(!hasher.verify("anything".into(), None).await.unwrap());
        assert!(
            !hasher
                .verify("x".into(), Some("garbage".into()))
                .await
                .unwrap()
        );
    }
}
