//! The SCIM 2.0 endpoint: router, handlers per resource, and the pure cores
//! (schema, filter, path, patch, projection, validate) they are built on.
pub mod error;
pub mod extensions;
pub mod filter;
pub mod patch;
pub mod path;
pub mod projection;
pub mod schema;
pub mod validate;

pub use error::{ScimError, ScimType};
pub mod groups;
pub mod listing;
pub mod request;
pub mod response;
pub mod server;
pub mod users;
