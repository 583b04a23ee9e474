//! Human sizes (`512M`, `8G`, `1.5GiB`) for disks and memory.
//!
//! Units are binary (`K` = 1024), as with `qemu-img`, `truncate` and
//! Firecracker's `mem_size_mib`; a bare number is bytes.

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("size is empty; write a number with a unit, such as 512M or 8G")]
    Empty,
    #[error("size {0:?} is not a number followed by an optional unit (K, M, G, T); example: 8G")]
    Malformed(String),
    #[error(
        "unit {unit:?} in size {input:?} is unknown; use K, M, G or T (binary, also written KiB/MiB/GiB/TiB)"
    )]
    UnknownUnit { input: String, unit: String },
    #[error("size {0:?} is too large")]
    Overflow(String),
}

/// Parses `input` into bytes.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.matches('.').count() > 1 || num.ends_with('.') {
        return Err(SizeError::Malformed(input.to_owned()));
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(SizeError::UnknownUnit {
                input: input.to_owned(),
                unit: unit.trim().to_owned(),
            });
        }
    };
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    let int: u64 = int_part
        .parse()
        .map_err(|_| SizeError::Overflow(input.to_owned()))?;
    let whole = int
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(input.to_owned()))?;
    if frac_part.is_empty() {
        return Ok(whole);
    }
    // Fractions are exact in decimal, then scaled: "1.5G" is 1.5 * 2^30.
    let digits = frac_part.len().min(9);
    let frac: u64 = frac_part[..digits]
        .parse()
        .map_err(|_| SizeError::Malformed(input.to_owned()))?;
    let denom = 10u64.pow(u32::try_from(digits).unwrap_or(9));
    let frac_bytes = (u128::from(frac) << shift) / u128::from(denom);
    whole
        .checked_add(u64::try_from(frac_bytes).map_err(|_| SizeError::Overflow(input.to_owned()))?)
        .ok_or_else(|| SizeError::Overflow(input.to_owned()))
}

/// Renders bytes with the largest binary unit that keeps one decimal.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_units() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("8gib"), Ok(8 << 30));
        assert_eq!(parse_size(" 2 GiB "), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
    }

    #[test]
    fn rejects_garbage_with_specific_errors() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert!(matches!(parse_size("G"), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size("-1G"), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size("1..5G"), Err(SizeError::Malformed(_))));
        assert!(matches!(
            parse_size("3X"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("99999999999T"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn formats_round_units() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(8 << 30), "8 GiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
    }
}
