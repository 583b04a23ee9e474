//! Extracting the ELF `vmlinux` from a bzImage.
//!
//! Firecracker boots an uncompressed ELF kernel, and so does QEMU's
//! `microvm` through the PVH entry point. Distribution kernels ship a
//! bzImage: real-mode setup code, then a small decompressor whose payload
//! is the compressed ELF. The boot protocol (>= 2.08) records where that
//! payload is (`payload_offset`, `payload_length`); its first bytes name
//! the codec.

use std::io::Read;

const SETUP_SECTS: usize = 0x1f1;
const HDR_MAGIC_OFF: usize = 0x202;
const HDR_MAGIC: &[u8; 4] = b"HdrS";
const VERSION_OFF: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
/// Blocks of the LZ4 legacy frame decompress to at most 8 MiB.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// No kernel is this large uncompressed; bounds a hostile payload.
const MAX_VMLINUX: usize = 1 << 30;

/// Compression of a bzImage payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Gzip,
    Xz,
    Lz4,
    Zstd,
    Bzip2,
    Lzma,
    Lzo,
}

impl Codec {
    fn sniff(data: &[u8]) -> Option<Self> {
        let starts = |m: &[u8]| data.starts_with(m);
        if starts(&[0x1f, 0x8b]) {
            Some(Self::Gzip)
        } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Some(Self::Xz)
        } else if starts(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
            Some(Self::Lz4)
        } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Self::Zstd)
        } else if starts(b"BZh") {
            Some(Self::Bzip2)
        } else if starts(&[0x5d, 0x00, 0x00]) {
            Some(Self::Lzma)
        } else if starts(&[0x89, b'L', b'Z', b'O']) {
            Some(Self::Lzo)
        } else {
            None
        }
    }
}

/// Why a kernel image could not be turned into a vmlinux.
#[derive(Debug, thiserror::Error)]
pub enum BzImageError {
    #[error(
        "not a kernel image: no ELF header and no bzImage `HdrS` signature (is this a vmlinux or vmlinuz file?)"
    )]
    NotAKernel,
    #[error(
        "bzImage boot protocol {major}.{minor:02} is too old to locate the payload (need 2.08+)"
    )]
    TooOld { major: u8, minor: u8 },
    #[error(
        "bzImage header points outside the file (payload {offset}+{length}, file {size} bytes): truncated or corrupt"
    )]
    OutOfBounds {
        offset: usize,
        length: usize,
        size: usize,
    },
    #[error(
        "bzImage payload uses {0:?}, which banger cannot decompress; supported: gzip, xz, lz4, zstd"
    )]
    UnsupportedCodec(Codec),
    #[error("bzImage payload has an unknown compression format (first bytes {0:02x?})")]
    UnknownCodec(Vec<u8>),
    #[error("decompressing the {codec:?} payload: {message}")]
    Decompress { codec: Codec, message: String },
    #[error("the decompressed payload is not an x86-64 ELF kernel")]
    NotElf,
}

/// Returns the ELF vmlinux for `image`: the image itself when it already
/// is one, else the decompressed bzImage payload.
pub fn extract_vmlinux(image: &[u8]) -> Result<Vec<u8>, BzImageError> {
    if image.starts_with(ELF_MAGIC) {
        check_elf(image)?;
        return Ok(image.to_vec());
    }
    let payload = payload(image)?;
    let codec = Codec::sniff(payload)
        .ok_or_else(|| BzImageError::UnknownCodec(payload.iter().take(8).copied().collect()))?;
    let elf = decompress(codec, payload)?;
    check_elf(&elf)?;
    Ok(elf)
}

fn le32(data: &[u8], off: usize) -> Option<u32> {
    data.get(off..off + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn payload(image: &[u8]) -> Result<&[u8], BzImageError> {
    if image.get(HDR_MAGIC_OFF..HDR_MAGIC_OFF + 4) != Some(HDR_MAGIC.as_slice()) {
        return Err(BzImageError::NotAKernel);
    }
    let version = image
        .get(VERSION_OFF..VERSION_OFF + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(BzImageError::NotAKernel)?;
    if version < 0x0208 {
        return Err(BzImageError::TooOld {
            major: (version >> 8) as u8,
            minor: (version & 0xff) as u8,
        });
    }
    let setup_sects = match image[SETUP_SECTS] {
        0 => 4,
        n => usize::from(n),
    };
    let pm_start = (setup_sects + 1) * 512;
    let off = le32(image, PAYLOAD_OFFSET).ok_or(BzImageError::NotAKernel)? as usize;
    let len = le32(image, PAYLOAD_LENGTH).ok_or(BzImageError::NotAKernel)? as usize;
    let start = pm_start.checked_add(off);
    let end = start.and_then(|s| s.checked_add(len));
    match (start, end) {
        (Some(s), Some(e)) if e <= image.len() && len > 0 => Ok(&image[s..e]),
        _ => Err(BzImageError::OutOfBounds {
            offset: pm_start.saturating_add(off),
            length: len,
            size: image.len(),
        }),
    }
}

fn decompress(codec: Codec, payload: &[u8]) -> Result<Vec<u8>, BzImageError> {
    let err = |e: &dyn std::fmt::Display| BzImageError::Decompress {
        codec,
        message: e.to_string(),
    };
    let mut out = Vec::new();
    // The kernel appends the uncompressed size after each stream; single-
    // stream decoders stop at the stream's end and never see it.
    match codec {
        Codec::Gzip => {
            flate2::read::GzDecoder::new(payload)
                .take(MAX_VMLINUX as u64)
                .read_to_end(&mut out)
                .map_err(|e| err(&e))?;
        }
        Codec::Xz => {
            liblzma::read::XzDecoder::new(payload)
                .take(MAX_VMLINUX as u64)
                .read_to_end(&mut out)
                .map_err(|e| err(&e))?;
        }
        Codec::Zstd => {
            zstd::stream::read::Decoder::new(payload)
                .map_err(|e| err(&e))?
                .single_frame()
                .take(MAX_VMLINUX as u64)
                .read_to_end(&mut out)
                .map_err(|e| err(&e))?;
        }
        Codec::Lz4 => out = lz4_legacy(payload).map_err(|m| err(&m))?,
        other => return Err(BzImageError::UnsupportedCodec(other)),
    }
    Ok(out)
}

/// The LZ4 "legacy" frame the kernel uses: magic, then blocks each
/// prefixed by its compressed size. A repeated magic starts another
/// frame; a size larger than what is left is the appended total size.
fn lz4_legacy(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    data = &data[4..];
    while data.len() >= 4 {
        let size = le32(data, 0).unwrap_or(0);
        data = &data[4..];
        if size == LZ4_LEGACY_MAGIC {
            continue;
        }
        let size = size as usize;
        if size > data.len() {
            if out.is_empty() {
                return Err(format!(
                    "block of {size} bytes but only {} left",
                    data.len()
                ));
            }
            break;
        }
        let n = lz4_flex::block::decompress_into(&data[..size], &mut block)
            .map_err(|e| e.to_string())?;
        out.extend_from_slice(&block[..n]);
        if out.len() > MAX_VMLINUX {
            return Err("decompressed size exceeds 1 GiB".into());
        }
        data = &data[size..];
    }
    if out.is_empty() {
        return Err("no data blocks".into());
    }
    Ok(out)
}

fn check_elf(data: &[u8]) -> Result<(), BzImageError> {
    // ELFCLASS64, little endian, e_machine EM_X86_64 (62).
    let ok = data.starts_with(ELF_MAGIC)
        && data.get(4) == Some(&2)
        && data.get(5) == Some(&1)
        && data.get(18..20) == Some([62u8, 0].as_slice());
    if ok {
        Ok(())
    } else {
        Err(BzImageError::NotElf)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    /// A minimal ELF64 x86-64 header followed by filler.
    pub fn fake_elf(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len.max(64)];
        v[..4].copy_from_slice(ELF_MAGIC);
        v[4] = 2;
        v[5] = 1;
        v[6] = 1;
        v[18] = 62;
        for (i, b) in v.iter_mut().enumerate().skip(64) {
            *b = (i % 251) as u8;
        }
        v
    }

    /// A bzImage around `payload` (with the kernel's appended size).
    fn fake_bzimage(payload: &[u8], uncompressed: usize) -> Vec<u8> {
        let setup_sects = 3usize;
        let pm = (setup_sects + 1) * 512;
        let decompressor = 300usize;
        let mut img = vec![0u8; pm + decompressor];
        img[SETUP_SECTS] = setup_sects as u8;
        img[HDR_MAGIC_OFF..HDR_MAGIC_OFF + 4].copy_from_slice(HDR_MAGIC);
        img[VERSION_OFF..VERSION_OFF + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        let mut full = payload.to_vec();
        full.extend_from_slice(&(uncompressed as u32).to_le_bytes());
        img[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4]
            .copy_from_slice(&(decompressor as u32).to_le_bytes());
        img[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&(full.len() as u32).to_le_bytes());
        img.extend_from_slice(&full);
        img.extend_from_slice(&[0u8; 100]);
        img
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("gz");
        e.finish().expect("gz")
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(data).expect("xz");
        e.finish().expect("xz")
    }

    fn lz4_legacy_frame(data: &[u8], block: usize) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in data.chunks(block) {
            let c = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(&c);
        }
        out
    }

    #[test]
    fn extracts_every_supported_codec() {
        let elf = fake_elf(3 * 1024 * 1024 + 17);
        let payloads = [
            ("gzip", gzip(&elf)),
            ("xz", xz(&elf)),
            ("zstd", zstd::encode_all(&elf[..], 3).expect("zstd")),
            // Multiple blocks, as in real kernels.
            ("lz4", lz4_legacy_frame(&elf, 1 << 20)),
        ];
        for (name, p) in payloads {
            let img = fake_bzimage(&p, elf.len());
            let got = extract_vmlinux(&img).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(got == elf, "{name}: content differs");
        }
    }

    #[test]
    fn an_elf_passes_through() {
        let elf = fake_elf(4096);
        assert_eq!(extract_vmlinux(&elf).expect("elf"), elf);
    }

    #[test]
    fn garbage_is_refused_with_specific_errors() {
        assert!(matches!(
            extract_vmlinux(b"hello"),
            Err(BzImageError::NotAKernel)
        ));
        let mut arm = fake_elf(128);
        arm[18] = 183; // aarch64
        assert!(matches!(extract_vmlinux(&arm), Err(BzImageError::NotElf)));

        let elf = fake_elf(4096);
        let mut img = fake_bzimage(&gzip(&elf), elf.len());
        img.truncate(2100);
        assert!(matches!(
            extract_vmlinux(&img),
            Err(BzImageError::OutOfBounds { .. })
        ));

        let img = fake_bzimage(b"BZh91AY&SY....", 10);
        assert!(matches!(
            extract_vmlinux(&img),
            Err(BzImageError::UnsupportedCodec(Codec::Bzip2))
        ));
        let img = fake_bzimage(b"\x00\x01\x02\x03garbage", 10);
        assert!(matches!(
            extract_vmlinux(&img),
            Err(BzImageError::UnknownCodec(_))
        ));

        // A payload that decompresses to something other than an ELF.
        let img = fake_bzimage(&gzip(b"not an elf at all"), 17);
        assert!(matches!(extract_vmlinux(&img), Err(BzImageError::NotElf)));

        // Corrupt compressed data.
        let mut bad = gzip(&elf);
        let mid = bad.len() / 2;
        bad[mid..mid + 8].copy_from_slice(b"XXXXXXXX");
        let img = fake_bzimage(&bad, elf.len());
        assert!(matches!(
            extract_vmlinux(&img),
            Err(BzImageError::Decompress { .. } | BzImageError::NotElf)
        ));

        let mut old = fake_bzimage(&gzip(&elf), elf.len());
        old[VERSION_OFF..VERSION_OFF + 2].copy_from_slice(&0x0206u16.to_le_bytes());
        assert!(matches!(
            extract_vmlinux(&old),
            Err(BzImageError::TooOld { .. })
        ));
    }
}
