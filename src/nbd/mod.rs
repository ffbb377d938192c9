//! NBD protocol, server and client, including the experimental zoned
//! extension described in `spec/nbd-zoned.md`.
//!
//! - [`proto`]: constants, wire formats, typed errors.
//! - [`server`]: [`server::Server`] — listeners, connection limits,
//!   handshake and transmission phases (private modules `handshake`, `transmission`).
//! - [`tls`]: sockets and rustls sessions shared by reader and writer.
//! - [`client`]: [`client::NbdClient`], [`client::NbdDevice`] and
//!   [`client::connect_uri`].

pub(crate) mod bufpool;
pub mod client;
pub(crate) mod handshake;
pub mod proto;
pub(crate) mod ratelog;
pub mod server;
pub mod tls;
pub(crate) mod transmission;
pub(crate) mod unaware;
pub(crate) mod writeback;
pub(crate) mod zerocopy;

pub use client::{connect_uri, NbdClient, NbdDevice};
pub use proto::{NbdError, Result};
pub use server::{Listener, Server, ServerConfig, ServerStats, ZonedWrites};
