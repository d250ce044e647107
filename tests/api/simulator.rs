//! Tenant simulator tests.
