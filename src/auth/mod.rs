//! SCIM bearer tokens: generation, hashing, Secret-backed storage, CLI.
pub mod cli;
