//! zcow: zoned storage emulated in qcow2 images.
//!
//! Layers, from the bottom: [`storage`] (byte stores), [`format`] (qcow2 with
//! the zoned extension), [`engine`] (the zone state machine), [`check`]
//! (consistency check and repair), [`nbd`] (protocol, server, client), and the
//! [`device`] interface the front ends (`zcow-img`, `zcow-io`, `zcow-nbd`)
//! drive. Data flows one way: front end → engine → format → storage.
#![warn(missing_docs)]

pub mod check;
pub mod cli_docs;
pub mod control;
pub mod copy_on_read;
pub mod device;
pub mod engine;
pub mod format;
pub mod fuzzing;
pub mod hostdev;
pub mod image_opts;
pub mod img;
pub mod iocmd;
pub mod nbd;
pub mod open;
pub mod overlay;
pub mod personality;
pub mod plain;
pub mod probe;
pub mod progress;
pub mod qjson;
pub mod raw;
pub mod signals;
pub mod size;
pub mod storage;
#[cfg(feature = "ublk")]
pub mod ublk;
pub mod zone;
