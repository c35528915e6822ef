//! The addresses of a node's pod CIDR that may be handed out.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::Error;

/// A node's pod CIDR with its gateway: every host address but the gateway is leasable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
}

impl Pool {
    /// A pool over `subnet` (prefix /30 or shorter), with `gateway` defaulting to the first
    /// host address. The network and broadcast addresses and the gateway are never leased.
    pub fn new(subnet: Ipv4Net, gateway: Option<Ipv4Addr>) -> Result<Pool, Error> {
        let subnet = subnet.trunc();
        if subnet.prefix_len() > 30 {
            return Err(Error::SubnetTooSmall { subnet });
        }
        let first_host = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let gateway = gateway.unwrap_or(first_host);
        let pool = Pool { subnet, gateway };
        if !pool.is_host(gateway) {
            return Err(Error::GatewayOutsideSubnet { gateway, subnet });
        }
        Ok(pool)
    }

    /// The subnet, truncated to its network address.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The gateway address (on the bridge).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Number of leasable addresses: the host addresses less the gateway.
    pub fn capacity(&self) -> u32 {
        self.last() - self.first()
    }

    /// True for a host address of the subnet (not network, not broadcast).
    fn is_host(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        n >= self.first() && n <= self.last()
    }

    /// True when `ip` may be leased.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.is_host(ip) && ip != self.gateway
    }

    fn first(&self) -> u32 {
        u32::from(self.subnet.network()) + 1
    }

    fn last(&self) -> u32 {
        u32::from(self.subnet.broadcast()) - 1
    }

    /// Leasable addresses in round-robin order, starting after `last_reserved` (or at the
    /// start of the range) and wrapping around once.
    pub fn candidates(&self, last_reserved: Option<Ipv4Addr>) -> impl Iterator<Item = Ipv4Addr> {
        let (first, last) = (u64::from(self.first()), u64::from(self.last()));
        let size = last - first + 1;
        let start = match last_reserved.map(|a| u64::from(u32::from(a))) {
            Some(n) if n >= first && n <= last => n - first + 1,
            _ => 0,
        };
        let gateway = self.gateway;
        // u64: for very short prefixes start + i would overflow u32.
        (0..size)
            .map(move |i| Ipv4Addr::from((first + (start + i) % size) as u32))
            .filter(move |ip| *ip != gateway)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str) -> Pool {
        Pool::new(s.parse().unwrap(), None).unwrap()
    }

    #[test]
    fn slash_24_leases_253_addresses() {
        let p = pool("10.244.1.0/24");
        assert_eq!(p.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(p.capacity(), 253);
        let all: Vec<_> = p.candidates(None).collect();
        assert_eq!(all.len(), 253);
        assert_eq!(all[0], Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(all[252], Ipv4Addr::new(10, 244, 1, 254));
    }

    #[test]
    fn slash_30_leases_one_and_smaller_is_refused() {
        let p = pool("10.0.0.0/30");
        assert_eq!(
            p.candidates(None).collect::<Vec<_>>(),
            [Ipv4Addr::new(10, 0, 0, 2)]
        );
        for s in ["10.0.0.0/31", "10.0.0.1/32"] {
            assert!(Pool::new(s.parse().unwrap(), None).is_err());
        }
    }

    #[test]
    fn round_robin_starts_after_the_last_reserved_and_wraps() {
        let p = pool("10.0.0.0/29");
        let order: Vec<_> = p
            .candidates(Some(Ipv4Addr::new(10, 0, 0, 5)))
            .map(|ip| ip.octets()[3])
            .collect();
        assert_eq!(order, [6, 2, 3, 4, 5]);
        let from_out_of_range: Vec<_> = p
            .candidates(Some(Ipv4Addr::new(192, 168, 0, 1)))
            .map(|ip| ip.octets()[3])
            .collect();
        assert_eq!(from_out_of_range, [2, 3, 4, 5, 6]);
    }

    #[test]
    fn gateway_anywhere_in_the_subnet_and_never_leased() {
        let p = Pool::new(
            "10.0.0.0/29".parse().unwrap(),
            Some(Ipv4Addr::new(10, 0, 0, 6)),
        )
        .unwrap();
        assert!(!p.contains(Ipv4Addr::new(10, 0, 0, 6)));
        assert!(p.contains(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(!p.contains(Ipv4Addr::new(10, 0, 0, 7)));
        assert!(!p.contains(Ipv4Addr::new(10, 0, 0, 0)));
        let bad = Pool::new(
            "10.0.0.0/29".parse().unwrap(),
            Some(Ipv4Addr::new(10, 0, 0, 7)),
        );
        assert!(bad.is_err());
    }
}
