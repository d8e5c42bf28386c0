//! Secrets at rest, encrypted under a rotatable master key.
//!
//! A [`Sealer`] encrypts small secrets (JWT signing keys, webhook secrets,
//! secret configuration values) with XChaCha20-Poly1305 under the primary
//! [`MasterKey`]. A sealed value names the key that sealed it, so after a
//! rotation the old keys stay listed to open what they sealed, and
//! [`Sealer::needs_reseal`] tells which values to re-encrypt.
//!
//! The optional associated data binds a sealed value to its place (say the
//! row id): a value copied to another row does not open.
//!
//! ```
//! use jadugar_core::{MasterKey, Sealer};
//!
//! let old = MasterKey::generate("k1");
//! let sealer = Sealer::new(old.clone(), []);
//! let sealed = sealer.seal(b"whsec_abc", b"webhook:42");
//! assert_eq!(sealer.open(&sealed, b"webhook:42").unwrap(), b"whsec_abc");
//! assert!(sealer.open(&sealed, b"webhook:43").is_err());
//!
//! // Rotate: k2 seals from now on, k1 still opens old values.
//! let rotated = Sealer::new(MasterKey::generate("k2"), [old]);
//! assert!(rotated.needs_reseal(&sealed));
//! assert_eq!(rotated.open(&sealed, b"webhook:42").unwrap(), b"whsec_abc");
//! ```

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const PREFIX: &str = "jdg1";
const NONCE_LEN: usize = 24;

/// A 256-bit master key with an id.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    key: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Why sealing or a master key failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealerError {
    /// The master key text is not `[id:]base64-of-32-bytes`.
    #[error("a master key must be 32 bytes in base64, optionally prefixed by `<key id>:`")]
    BadKey,
    /// The value is not a sealed value.
    #[error("not a sealed value")]
    Malformed,
    /// No configured master key has the id that sealed the value.
    #[error("sealed under master key {0:?}, which is not configured")]
    UnknownKey(String),
    /// Decryption failed: wrong key, wrong associated data, or tampering.
    #[error("the sealed value does not open with its key (tampered, or sealed for another place)")]
    Tampered,
}

impl MasterKey {
    /// A key from raw bytes.
    pub fn new(id: impl Into<String>, key: [u8; 32]) -> Self {
        Self { id: id.into(), key }
    }

    /// A fresh random key.
    pub fn generate(id: impl Into<String>) -> Self {
        Self::new(id, rand::random())
    }

    /// Parses `<id>:<base64>` or bare `<base64>` (whose id is then derived
    /// from the key itself), as stored in `JADUGAR_MASTER_KEY`.
    pub fn parse(text: &str) -> Result<Self, SealerError> {
        let text = text.trim();
        let (id, encoded) = match text.split_once(':') {
            Some((id, encoded)) if !id.is_empty() && id.len() <= 64 => (Some(id), encoded),
            Some(_) => return Err(SealerError::BadKey),
            None => (None, text),
        };
        let bytes = STANDARD
            .decode(encoded)
            .or_else(|_| URL_SAFE_NO_PAD.decode(encoded))
            .map_err(|_| SealerError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| SealerError::BadKey)?;
        let id = match id {
            Some(id) => id.to_owned(),
            None => hex::encode(&Sha256::digest(key)[..4]),
        };
        Ok(Self::new(id, key))
    }

    /// The `<id>:<base64>` text form, for writing to a key file.
    pub fn to_text(&self) -> String {
        format!("{}:{}", self.id, STANDARD.encode(self.key))
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Seals and opens secrets; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Sealer {
    primary: MasterKey,
    older: Vec<MasterKey>,
}

impl Sealer {
    /// Seals under `primary`; opens values sealed by `primary` or `older`.
    pub fn new(primary: MasterKey, older: impl IntoIterator<Item = MasterKey>) -> Self {
        Self {
            primary,
            older: older.into_iter().collect(),
        }
    }

    /// The primary key's id.
    pub fn primary_id(&self) -> &str {
        &self.primary.id
    }

    fn key(&self, id: &str) -> Option<&MasterKey> {
        std::iter::once(&self.primary)
            .chain(&self.older)
            .find(|k| k.id == id)
    }

    /// Encrypts `plaintext`, bound to `aad`, as `jdg1.<key id>.<base64>`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> String {
        let cipher = XChaCha20Poly1305::new((&self.primary.key).into());
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = XNonce::from_slice(&nonce_bytes);
        let aad = self.aad(&self.primary.id, aad);
        // Encryption fails only for plaintexts beyond 256 GiB.
        let ciphertext = cipher
            .encrypt(
                nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut blob = nonce_bytes.to_vec();
        blob.extend_from_slice(&ciphertext);
        format!(
            "{PREFIX}.{}.{}",
            self.primary.id,
            URL_SAFE_NO_PAD.encode(blob)
        )
    }

    /// Decrypts a value made by [`seal`](Self::seal) with the same `aad`.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, SealerError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(PREFIX), Some(id), Some(blob)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SealerError::Malformed);
        };
        let key = self
            .key(id)
            .ok_or_else(|| SealerError::UnknownKey(id.to_owned()))?;
        let blob = URL_SAFE_NO_PAD
            .decode(blob)
            .map_err(|_| SealerError::Malformed)?;
        if blob.len() < NONCE_LEN {
            return Err(SealerError::Malformed);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new((&key.key).into());
        let aad = self.aad(id, aad);
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealerError::Tampered)
    }

    /// Whether `sealed` was sealed by a key other than the primary one.
    pub fn needs_reseal(&self, sealed: &str) -> bool {
        sealed
            .split('.')
            .nth(1)
            .is_none_or(|id| id != self.primary.id)
    }

    /// A 32-byte key for `purpose` (cursor signing, CSRF tokens), derived
    /// from the primary master key, so every host with the same master key
    /// derives the same key.
    pub fn derive_key(&self, purpose: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.primary.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(b"jadugar-derive:");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn aad(&self, key_id: &str, aad: &[u8]) -> Vec<u8> {
        let mut bound = Vec::with_capacity(key_id.len() + aad.len() + 1);
        bound.extend_from_slice(key_id.as_bytes());
        bound.push(0);
        bound.extend_from_slice(aad);
        bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_forms() {
        let key = MasterKey::generate("main");
        let parsed = MasterKey::parse(&key.to_text()).unwrap();
        assert_eq!(parsed.id(), "main");
        let bare = MasterKey::parse(&STANDARD.encode([9u8; 32])).unwrap();
        assert_eq!(bare.id().len(), 8);
        assert_eq!(MasterKey::parse("short").unwrap_err(), SealerError::BadKey);
        assert_eq!(MasterKey::parse(":abc").unwrap_err(), SealerError::BadKey);
        assert!(!format!("{key:?}").contains(&STANDARD.encode(key.key)));
    }

    #[test]
    fn tamper_and_unknown_key() {
        let sealer = Sealer::new(MasterKey::generate("a"), []);
        let sealed = sealer.seal(b"secret", b"");
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(sealer.open(&tampered, b""), Err(SealerError::Tampered));
        assert_eq!(sealer.open("garbage", b""), Err(SealerError::Malformed));
        let other = Sealer::new(MasterKey::generate("b"), []);
        assert_eq!(
            other.open(&sealed, b""),
            Err(SealerError::UnknownKey("a".into()))
        );
        assert!(!sealer.needs_reseal(&sealed));
    }

    #[test]
    fn derived_keys_differ_by_purpose() {
        let sealer = Sealer::new(MasterKey::new("a", [1; 32]), []);
        assert_ne!(sealer.derive_key("cursor"), sealer.derive_key("csrf"));
        let again = Sealer::new(MasterKey::new("a", [1; 32]), []);
        assert_eq!(sealer.derive_key("cursor"), again.derive_key("cursor"));
    }
}
