//! Sizing an initrd so QEMU's `microvm` can boot it.
//!
//! QEMU places the initrd at the top of low RAM, its start rounded down
//! to a page, and `microvm` builds its ACPI tables (DSDT, which lists the
//! virtio-mmio devices) in the last bytes of that same RAM without
//! keeping the initrd out of them. An initrd whose last page runs into
//! those bytes overwrites the DSDT: the kernel says `ACPI Error:
//! AE_NO_ACPI_TABLES`, finds no virtio device, and init waits in vain for
//! `/dev/vda`. Whether it happens depends only on the initrd's size
//! modulo a page (measured: a 2,419,816-byte initramfs ended 920 bytes
//! below the top, over a DSDT starting 960 bytes below it). Zero bytes
//! after an initramfs are skipped by the kernel's unpacker, compressed
//! or not, so padding the initrd to end just past a page boundary keeps
//! all but [`TAIL`] bytes of the top page free for the tables.

use std::io;
use std::path::Path;

const PAGE: u64 = 4096;
/// Bytes of the initrd left in its last page: 4 keeps the length a
/// multiple of 4, as newc archives are.
const TAIL: u64 = 4;

/// Zero bytes to append to an initrd of `len` bytes.
pub fn padding_for(len: u64) -> u64 {
    (TAIL + PAGE - len % PAGE) % PAGE
}

/// Pads `bytes` in place.
pub fn pad(bytes: &mut Vec<u8>) {
    let extra = padding_for(bytes.len() as u64) as usize;
    bytes.resize(bytes.len() + extra, 0);
}

/// Pads the file at `path` in place (an imported initrd).
pub fn pad_file(path: &Path) -> io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    let len = f.metadata()?.len();
    // set_len extends with zeros (a hole, which reads as zeros).
    f.set_len(len + padding_for(len))?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_ends_four_bytes_into_a_page() {
        for len in [0u64, 1, 3, 4, 5, 4092, 4095, 4096, 4100, 2_419_816] {
            let padded = len + padding_for(len);
            assert_eq!(padded % PAGE, TAIL, "{len}");
            assert!(padding_for(len) < PAGE, "{len}");
        }
    }

    #[test]
    fn the_measured_case_leaves_the_tables_room() {
        // Start rounded down to a page below the top; its end must stay
        // clear of the 960 bytes the tables took.
        let top = 0x2000_0000u64;
        let len = 2_419_816 + padding_for(2_419_816);
        let start = (top - len) & !(PAGE - 1);
        assert!(top - (start + len) >= PAGE - TAIL);
    }

    #[test]
    fn a_file_is_padded_with_zeros() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("initrd.img");
        std::fs::write(&p, b"070701").expect("write");
        pad_file(&p).expect("pad");
        let back = std::fs::read(&p).expect("read");
        assert_eq!(back.len() as u64 % PAGE, TAIL);
        assert!(back.starts_with(b"070701") && back[6..].iter().all(|&b| b == 0));
    }
}
