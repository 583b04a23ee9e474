//! Boot assets: turning registry packages into something a VMM boots.
//!
//! - [`bzimage`]: the uncompressed ELF `vmlinux` inside a bzImage.
//! - [`deb`]: reading `.deb` archives without installing them.
//! - [`modules`]: kernel module dependency resolution.
//! - [`cpio`]: the newc archive an initramfs is.
//! - [`initrd`]: padding an initrd so QEMU `microvm` keeps its ACPI tables.

pub mod bzimage;
pub mod cpio;
pub mod deb;
pub mod files;
pub mod initrd;
pub mod kernel;
pub mod modules;
