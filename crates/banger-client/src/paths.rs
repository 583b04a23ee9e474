//! Where each resource lives in the API.

/// Path segment for a VM reference. References are validated DNS labels
/// on the daemon side; anything else is percent-encoded here so a bad
/// reference reaches the daemon intact and gets its clear refusal.
pub(crate) fn vm_path(vm: &str) -> String {
    format!("/v1/vms/{}", escape(vm))
}

pub(crate) fn asset_path(collection: &str, name: &str) -> String {
    format!("/v1/{collection}/{}", escape(name))
}

fn escape(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
