//! VM (and asset) names: DNS labels, because every VM is published as
//! `<name>.vm` in banger's DNS.

/// Longest DNS label (RFC 1035).
pub const MAX_NAME_LEN: usize = 63;

/// Longest Linux interface name (`IFNAMSIZ` - 1).
pub const IFNAME_MAX: usize = 15;

/// The one rule for interface names banger accepts (bridge, uplink,
/// taps), shared by the configuration and the helper's policy: 1-15
/// bytes of `a-z A-Z 0-9 - _ .`, and not `.` or `..`.
pub fn is_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty; pass a name such as `dev-box`, or omit it to get a generated one")]
    Empty,
    #[error(
        "name {name:?} is {len} characters long; the limit is {MAX_NAME_LEN} (it must fit a DNS label)"
    )]
    TooLong { name: String, len: usize },
    #[error("name {name:?} contains {ch:?}; use only lowercase letters a-z, digits 0-9 and '-'")]
    InvalidChar { name: String, ch: char },
    #[error("name {name:?} must not start or end with '-'")]
    EdgeHyphen { name: String },
}

/// Checks `name` against DNS-label rules: `a-z`, `0-9`, `-`, at most 63
/// characters, no leading or trailing hyphen.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::InvalidChar {
            name: name.to_owned(),
            ch,
        });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::EdgeHyphen {
            name: name.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_one_rule() {
        for ok in ["banger0", "bg-0123456789ab", "eth0.100", "br_lan", "a"] {
            assert!(is_ifname(ok), "{ok}");
        }
        for bad in ["", ".", "..", "sixteen-chars-xx", "eth0/1", "a b", "bän"] {
            assert!(!is_ifname(bad), "{bad:?}");
        }
    }

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "dev-box", "x1", "0", "a-b-c", &"a".repeat(63)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_each_rule_with_its_own_error() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert!(matches!(
            validate_name(&"a".repeat(64)),
            Err(NameError::TooLong { len: 64, .. })
        ));
        assert!(matches!(
            validate_name("Dev"),
            Err(NameError::InvalidChar { ch: 'D', .. })
        ));
        assert!(matches!(
            validate_name("a_b"),
            Err(NameError::InvalidChar { ch: '_', .. })
        ));
        assert!(matches!(
            validate_name("a.b"),
            Err(NameError::InvalidChar { ch: '.', .. })
        ));
        assert!(matches!(
            validate_name("../x"),
            Err(NameError::InvalidChar { ch: '.', .. })
        ));
        assert!(matches!(
            validate_name("é"),
            Err(NameError::InvalidChar { ch: 'é', .. })
        ));
        assert!(matches!(
            validate_name("-a"),
            Err(NameError::EdgeHyphen { .. })
        ));
        assert!(matches!(
            validate_name("a-"),
            Err(NameError::EdgeHyphen { .. })
        ));
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let msg = validate_name("Bad_Name").expect_err("invalid").to_string();
        assert!(msg.contains("lowercase letters"), "{msg}");
    }
}
