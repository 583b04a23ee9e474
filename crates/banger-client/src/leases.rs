//! Leases: VMs removed by the daemon when their client goes.

use banger_api::vm::LeaseEvent;
use banger_http::{Lines, Method};

use crate::{Client, ClientError};

/// A held lease: VMs created under [`Lease::id`] are killed and deleted
/// by the daemon once this (and the connection it keeps) is dropped, or
/// the process holding it dies.
#[derive(Debug)]
pub struct Lease {
    id: String,
    _open: Lines,
}

impl Lease {
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Client {
    pub async fn hold_lease(&self) -> Result<Lease, ClientError> {
        const WHAT: &str = "/v1/leases";
        let resp = self.request(Method::POST, WHAT).send().await?;
        if !resp.status().is_success() {
            return Err(crate::transport::refusal(resp).await);
        }
        let mut lines = resp.lines();
        let ended = || ClientError::StreamEnded { what: WHAT.into() };
        let first = lines.next().await?.ok_or_else(ended)?;
        match serde_json::from_slice(&first) {
            Ok(LeaseEvent::Held { lease }) => Ok(Lease {
                id: lease,
                _open: lines,
            }),
            Err(e) => Err(ClientError::Decode {
                what: WHAT.into(),
                message: format!("bad lease line: {e}"),
            }),
        }
    }
}
