//! The privileged helper: the only part of banger that needs root for
//! networking, so that `bangerd` itself can run as an unprivileged user.
//!
//! It answers one JSON request per line on a unix socket that only root
//! and the daemon's user may use (checked by `SO_PEERCRED`, on top of the
//! file mode). Its surface is deliberately narrow, and every request is
//! checked against a [`Policy`] before anything happens:
//! - the bridge is the one configured, with its configured address;
//! - taps are named `bg-<12 hex>` and must belong to a VM that exists in
//!   the state dir (a foreign id is refused), and only the daemon's own uid
//!   may be made their owner;
//! - NAT addresses lie inside the bridge's subnet, interface names are
//!   plain names (no `/`, no `..`);
//! - jails are named by a VM id of an existing VM; the files staged into
//!   one lie beneath the state dir (a VM's disks beneath its own dir) and
//!   are the daemon's, opened without following symlinks; the jailer,
//!   the firecracker binary, the chroot base and the jail's uid (the
//!   daemon's) come from the helper's own configuration, never from a
//!   request.
//!
//! [`HelperClient`] implements [`NetOps`], [`Firewall`] and [`JailOps`]
//! over the socket, so the daemon core does not know whether it talks to
//! the kernel or to the helper.

mod client;
mod policy;
mod proto;
mod server;

pub use crate::remote::{Failure, FailureCode, HelperError};
pub use client::HelperClient;
pub use policy::{Policy, PolicyError};
pub use proto::{HelperRequest, HelperResponse, Reply};
pub use server::HelperServer;

#[cfg(test)]
mod tests;
