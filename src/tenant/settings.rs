//! Settings of the Graph client: [`TenantSettings`], defined with the rest of the settings in
//! [`crate::configuration`] and re-exported here.
pub use crate::configuration::{Credential, TenantSettings};
