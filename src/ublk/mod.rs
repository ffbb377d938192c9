//! Linux ublk front end: serves a [`BlockDevice`](crate::device::BlockDevice)
//! as `/dev/ublkbN` through the `libublk` crate, a host-managed zoned block
//! device when the image is zoned. Same layer as [`crate::nbd`].
//!
//! * [`layout`]: what the kernel is told (size, zone geometry, limits).
//! * [`map`]: request → device call → completion, pure and host-testable.
//! * [`server`]: the libublk control and queue loops.
//! * [`dispatch`]: worker threads behind a queue.
//! * [`usercopy`]: a request's bytes moved between the driver and memory.
//! * [`filemap`]: the image file mapped, so they move in one copy.

pub mod dispatch;
pub mod filemap;
pub mod layout;
pub mod map;
pub mod server;
pub mod usercopy;

pub use layout::{layout, Layout, LayoutError, ZonedLayout};
pub use map::{encode_zone, encode_zones, errno, execute, execute_write, Completion, Op, Request};
pub use server::{serve, ServeOptions};
