//! The inventory's one domain layer: appliances, clients and advisories as the CLI and the admin
//! API change them, and failures as operators record them.
//!
//! Every rule lives here once: input parsing (`*Input::parse`, pure: ids, keys, endpoints,
//! ranges, windows), the rules between fields, and the service functions that store a change.
//! Rules that only the database can decide atomically (uniqueness, "in use", "exists") are
//! checked inside the storing transaction by [`crate::store::inventory`], which reports them
//! with the same [`InventoryError`]. Both front ends print or return the error's reason
//! unchanged, so the CLI and the API refuse the same input with the same words.

pub mod advisory;
pub mod appliance;
pub mod client;
mod error;
pub mod failure;

pub use advisory::{ADVISORY_KINDS, Advisory, AdvisoryInput, AdvisoryScope, NewAdvisory};
pub use appliance::{Appliance, ApplianceChange, ApplianceInput, ApplianceUpdate, NewAppliance};
pub use client::{Client, ClientFilter, ClientInput, ClientPage, ConfigOptions, NewClient};
pub use error::{ErrorClass, InventoryError};
pub use failure::{FailureFilter, FailureInput, FailureRecord, NewFailure};
