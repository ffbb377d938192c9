//! The logic behind `zcow-img` commands (the binary only parses arguments).

pub mod create;
pub mod info;
pub mod zone;
pub mod zonemap;
