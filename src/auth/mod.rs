//! SCIM bearer tokens: generation, hashing, Secret-backed storage, the axum middleware
//! and the `token` CLI.
//!
//! - Tokens are `kscim_` + 256 bits of OS randomness, shown once by `kube-scim token
//!   create`. Only their SHA-256 is stored, one Secret per token in the operator's
//!   namespace ([`store`] documents the layout).
//! - Every running replica keeps the token hashes in memory through a reflector
//!   ([`TokenStore`]); a request's token is compared in constant time against all of them.
//!   Several tokens can be valid at once, so rotation is create → switch the IdP → revoke.
//! - Failures answer 401 with the SCIM error body, or 503 + `Retry-After` until the store
//!   has synced; `kube_scim_auth_failures_total{category}` counts them by bounded reason.
//! - Each token's last use is recorded in a Lease of its own ([`usage`]), never in its
//!   Secret: the SCIM side has no write access to Secrets.
//! - Logs name tokens by their name only. The token value never reaches a log, an error
//!   message, a metric or a Debug impl.
pub mod cli;
pub mod middleware;
pub mod store;
pub mod token;
pub mod usage;

pub use cli::{AuthError, TokenCommand};
pub use middleware::{require_bearer, AuthState};
pub use store::{AuthFailure, TokenIdentity, TokenStore};
pub use token::{TokenEntry, TokenHash};
pub use usage::UsageRecorder;
