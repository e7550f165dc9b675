//! The validating admission webhook for GroupRoleMapping and ClusterGroupRoleMapping:
//! a mapping's author may only map what they could bind themselves (issue 9).
//! `review` decides (pure), `sar` asks the API server, `server` serves HTTPS.
pub mod review;
pub mod sar;
pub mod server;
