//! The shared vocabulary of the Jadugar crates.
//!
//! Every component crate (`jadugar-auth`, `jadugar-registry`,
//! `jadugar-tracking`, `jadugar-gateway`) depends on this crate and on nothing
//! else of Jadugar's. What two components both need lives here:
//!
//! - [`Problem`]: RFC 9457 `application/problem+json` error responses.
//! - [`Principal`]: who is calling, put into request extensions by auth.
//! - [`define_id!`]: UUIDv7 id newtypes; [`cursor`]: tamper-evident pagination.
//! - [`Clock`]: time as a dependency, with a [`ManualClock`] for tests.
//! - [`storage`]: SQL pools and Redis connections from URLs, and migrations.
//! - [`Discovery`]: how the gateway finds upstream endpoints.
//! - [`Sealer`]: secrets at rest under a rotatable master key.
//! - [`outbound::AddressPolicy`]: SSRF defence for user-registered addresses.
//! - [`request_id`]: the `x-request-id` layer every Problem reads.
//!
//! ```
//! use jadugar_core::{Principal, PrincipalKind, Problem};
//!
//! let caller = Principal::new("user-1", PrincipalKind::User)
//!     .with_permissions(["tracking:*"]);
//! assert!(caller.can("tracking:task:write"));
//!
//! let problem = Problem::forbidden("missing permission registry:write");
//! assert_eq!(problem.status, 403);
//! ```

pub mod clock;
pub mod conditional;
pub mod cursor;
pub mod discovery;
pub mod extract;
pub mod id;
pub mod outbound;
pub mod principal;
pub mod problem;
pub mod request_id;
pub mod sealer;
pub mod storage;
#[cfg(feature = "test-support")]
pub mod test_support;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use cursor::{CursorCodec, CursorError, Page, PageRequest};
pub use discovery::{Discovery, Endpoint, StaticDiscovery};
pub use principal::{Principal, PrincipalKind};
pub use problem::{FieldError, Problem};
pub use sealer::{MasterKey, Sealer, SealerError};

#[doc(hidden)]
pub mod __private {
    pub use serde;
    pub use utoipa;
    pub use uuid;
}
