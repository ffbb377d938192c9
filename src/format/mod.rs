//! The qcow2 format layer, with the zoned extension.

pub mod error;
pub mod wp;

pub use error::{FormatError, Result};
