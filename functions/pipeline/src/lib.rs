//! Shared client and business logic.
