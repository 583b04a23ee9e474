//! banger's DNS zone: `<name>.vm` for every live VM, and nothing else.

use std::net::Ipv4Addr;

use banger_store::Store;

use crate::core::Core;

/// banger's DNS listens here on the bridge address.
pub const DNS_PORT: u16 = 53;

impl Core {
    /// Publishes `<name>.vm` for every live VM, and nothing else. Called
    /// after every transition, so the zone never names a dead VM.
    pub(crate) async fn rebuild_dns(&self) {
        let vms = match self.db(Store::list_vms).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "dns: cannot list vms");
                return;
            }
        };
        // Each liveness check reads /proc: all of them off the async workers.
        let candidates: Vec<_> = vms
            .into_iter()
            .filter_map(|v| {
                let ip: Ipv4Addr = v.runtime.guest_ip?;
                let live = self.liveness(&v)?;
                Some((v.name, ip, live))
            })
            .collect();
        let records = match tokio::task::spawn_blocking(move || {
            candidates
                .into_iter()
                .filter(|(_, _, live)| live.check())
                .map(|(name, ip, _)| (name, ip))
                .collect()
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "dns: liveness checks failed");
                return;
            }
        };
        let bind = std::net::SocketAddr::new(self.config().network.bridge_ip.into(), DNS_PORT);
        self.deps().dns.publish(bind, records).await;
    }
}
