//! A fake that keeps what was published.

use std::net::SocketAddr;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Dns, Records};

/// Records every published set.
#[derive(Debug, Default)]
pub struct FakeDns {
    pub published: Mutex<Vec<Records>>,
}

impl FakeDns {
    pub fn last(&self) -> Records {
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

#[async_trait]
impl Dns for FakeDns {
    async fn publish(&self, _bind: SocketAddr, records: Records) {
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(records);
    }
}
