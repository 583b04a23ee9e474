//! Guest addresses: the bridge's subnet, minus the bridge and whatever
//! VMs hold already.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The first host address of `subnet` that is neither the bridge's nor
/// in `used`; `None` when the subnet is full.
pub fn first_free(subnet: Ipv4Net, bridge: Ipv4Addr, used: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    subnet
        .hosts()
        .find(|ip| *ip != bridge && !used.contains(ip))
}

/// The bridge's subnet, from its address and prefix length (validated by
/// the configuration).
pub fn subnet(bridge: Ipv4Addr, prefix_len: u8) -> Option<Ipv4Net> {
    Ipv4Net::new(bridge, prefix_len).ok().map(|n| n.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_network_bridge_used_and_broadcast() {
        let bridge = Ipv4Addr::new(10, 99, 0, 1);
        let net = subnet(bridge, 29).expect("subnet");
        assert_eq!(net.to_string(), "10.99.0.0/29");
        assert_eq!(
            first_free(net, bridge, &[]),
            Some(Ipv4Addr::new(10, 99, 0, 2))
        );
        let used: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 99, 0, i)).collect();
        assert_eq!(
            first_free(net, bridge, &used),
            None,
            "the broadcast is never handed out"
        );
        assert_eq!(
            first_free(net, bridge, &used[1..]),
            Some(Ipv4Addr::new(10, 99, 0, 2))
        );
    }

    #[test]
    fn the_bridge_need_not_be_the_first_host() {
        let bridge = Ipv4Addr::new(10, 99, 0, 9);
        let net = subnet(bridge, 28).expect("subnet");
        assert_eq!(
            first_free(net, bridge, &[]),
            Some(Ipv4Addr::new(10, 99, 0, 1))
        );
    }
}
