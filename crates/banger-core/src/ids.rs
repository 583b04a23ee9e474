//! Record ids.

use rand::Rng;

/// 16 hex digits: short enough to derive tap (`bg-` + 12) and jail names
/// from, long enough never to collide on one host. Assets use the same.
pub fn new_id() -> String {
    format!("{:016x}", rand::rng().random::<u64>())
}
