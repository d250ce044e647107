//! The tenant boundary: the `Tenant` trait the engine uses and its Microsoft Graph client.
pub mod settings;
pub use settings::TenantSettings;
