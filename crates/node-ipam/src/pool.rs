//! The addresses of a node's pod ranges that may be handed out: one [`Pool`] per range, and
//! the ordered [`Ranges`] of a network (at most one per address family).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::Error;

/// One pod range with its gateway: every host address but the gateway is leasable.
///
/// IPv4: the network and broadcast addresses are never leased (a /30 or shorter prefix).
/// IPv6, as host-local: the range runs from the address after the subnet-router anycast
/// address (the all-zeros host) to the last one (IPv6 has no broadcast; a /126 or shorter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    subnet: IpNet,
    gateway: IpAddr,
}

impl Pool {
    /// A pool over `subnet`, with `gateway` defaulting to the first host address.
    pub fn new(subnet: impl Into<IpNet>, gateway: Option<IpAddr>) -> Result<Pool, Error> {
        let subnet = subnet.into().trunc();
        let max_prefix = match subnet {
            IpNet::V4(_) => 30,
            IpNet::V6(_) => 126,
        };
        if subnet.prefix_len() > max_prefix {
            return Err(Error::SubnetTooSmall { subnet });
        }
        let first_host = from_int(subnet.network(), to_int(subnet.network()) + 1);
        let gateway = gateway.unwrap_or(first_host);
        let pool = Pool { subnet, gateway };
        if !pool.is_host(gateway) {
            return Err(Error::GatewayOutsideSubnet { gateway, subnet });
        }
        Ok(pool)
    }

    /// The subnet, truncated to its network address.
    pub fn subnet(&self) -> IpNet {
        self.subnet
    }

    /// The gateway address (on the bridge).
    pub fn gateway(&self) -> IpAddr {
        self.gateway
    }

    /// The gateway with the subnet's prefix length: the bridge's address.
    pub fn gateway_net(&self) -> IpNet {
        IpNet::new(self.gateway, self.subnet.prefix_len()).unwrap_or(self.subnet)
    }

    /// True for an IPv6 range.
    pub fn is_ipv6(&self) -> bool {
        matches!(self.subnet, IpNet::V6(_))
    }

    /// Number of leasable addresses: the host addresses less the gateway.
    pub fn capacity(&self) -> u128 {
        self.last() - self.first()
    }

    /// True for a host address of the subnet (not network, not IPv4 broadcast).
    fn is_host(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.subnet.addr().is_ipv4() {
            return false;
        }
        let n = to_int(ip);
        n >= self.first() && n <= self.last()
    }

    /// True when `ip` may be leased.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.is_host(ip) && ip != self.gateway
    }

    /// True when `ip` is of this pool's address family.
    pub fn same_family(&self, ip: IpAddr) -> bool {
        ip.is_ipv6() == self.is_ipv6()
    }

    fn first(&self) -> u128 {
        to_int(self.subnet.network()) + 1
    }

    fn last(&self) -> u128 {
        match self.subnet {
            IpNet::V4(n) => u128::from(u32::from(n.broadcast())) - 1,
            IpNet::V6(n) => u128::from(n.broadcast()),
        }
    }

    /// Leasable addresses in round-robin order, starting after `last_reserved` (or at the
    /// start of the range) and wrapping around once.
    pub fn candidates(&self, last_reserved: Option<IpAddr>) -> impl Iterator<Item = IpAddr> {
        let (first, last) = (self.first(), self.last());
        // At most 2^128 - 2: fits, as every sum below stays under `size`.
        let size = last - first + 1;
        let start = match last_reserved.filter(|a| self.same_family(*a)).map(to_int) {
            Some(n) if n >= first && n < last => n - first + 1,
            _ => 0,
        };
        let (gateway, network) = (self.gateway, self.subnet.network());
        let mut i: u128 = 0;
        std::iter::from_fn(move || {
            if i == size {
                return None;
            }
            // (start + i) mod size without overflowing u128 on the widest ranges.
            let offset = if i < size - start {
                start + i
            } else {
                i - (size - start)
            };
            i += 1;
            Some(from_int(network, first + offset))
        })
        .filter(move |ip| *ip != gateway)
    }
}

fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of `family`'s kind with value `n` (truncated to 32 bits for IPv4).
fn from_int(family: IpAddr, n: u128) -> IpAddr {
    match family {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// A network's pod ranges, in the configuration's order: at most one IPv4 and one IPv6.
/// Range `i` keeps its round-robin hint in `last_reserved_ip.<i>`, as host-local numbers the
/// range sets of its `ranges`; a pod gets one address from each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ranges(Vec<Pool>);

impl Ranges {
    /// The ranges, in order; refused when empty or when two share an address family.
    pub fn new(pools: Vec<Pool>) -> Result<Ranges, Error> {
        let v6 = pools.iter().filter(|p| p.is_ipv6()).count();
        if pools.is_empty() || v6 > 1 || pools.len() - v6 > 1 {
            return Err(Error::InvalidRanges(
                pools.iter().map(Pool::subnet).collect(),
            ));
        }
        Ok(Ranges(pools))
    }

    /// One range.
    pub fn one(pool: Pool) -> Ranges {
        Ranges(vec![pool])
    }

    /// The ranges, in order.
    pub fn pools(&self) -> &[Pool] {
        &self.0
    }

    /// The first range: the pod's primary address family.
    pub fn primary(&self) -> &Pool {
        &self.0[0]
    }

    /// The IPv4 range, if there is one.
    pub fn v4(&self) -> Option<&Pool> {
        self.0.iter().find(|p| !p.is_ipv6())
    }

    /// The IPv6 range, if there is one.
    pub fn v6(&self) -> Option<&Pool> {
        self.0.iter().find(|p| p.is_ipv6())
    }

    /// The range that would hold `ip`'s family, if any.
    pub fn for_family(&self, ip: IpAddr) -> Option<&Pool> {
        self.0.iter().find(|p| p.same_family(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str) -> Pool {
        Pool::new(s.parse::<IpNet>().unwrap(), None).unwrap()
    }

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn slash_24_leases_253_addresses() {
        let p = pool("10.244.1.0/24");
        assert_eq!(p.gateway(), v4("10.244.1.1"));
        assert_eq!(p.capacity(), 253);
        let all: Vec<_> = p.candidates(None).collect();
        assert_eq!(all.len(), 253);
        assert_eq!(all[0], v4("10.244.1.2"));
        assert_eq!(all[252], v4("10.244.1.254"));
    }

    #[test]
    fn slash_30_leases_one_and_smaller_is_refused() {
        let p = pool("10.0.0.0/30");
        assert_eq!(p.candidates(None).collect::<Vec<_>>(), [v4("10.0.0.2")]);
        for s in ["10.0.0.0/31", "10.0.0.1/32", "fd00::/127", "fd00::1/128"] {
            assert!(Pool::new(s.parse::<IpNet>().unwrap(), None).is_err(), "{s}");
        }
    }

    #[test]
    fn round_robin_starts_after_the_last_reserved_and_wraps() {
        let p = pool("10.0.0.0/29");
        let order: Vec<_> = p
            .candidates(Some(v4("10.0.0.5")))
            .map(|ip| ip.to_string())
            .collect();
        assert_eq!(
            order,
            ["10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]
        );
        for elsewhere in ["192.168.0.1", "fd00::5", "10.0.0.6"] {
            let from: Vec<_> = p.candidates(Some(v4(elsewhere))).collect();
            assert_eq!(from[0], v4("10.0.0.2"), "{elsewhere}");
            assert_eq!(from.len(), 5);
        }
    }

    #[test]
    fn gateway_anywhere_in_the_subnet_and_never_leased() {
        let p = Pool::new(
            "10.0.0.0/29".parse::<IpNet>().unwrap(),
            Some(v4("10.0.0.6")),
        )
        .unwrap();
        assert!(!p.contains(v4("10.0.0.6")));
        assert!(p.contains(v4("10.0.0.1")));
        assert!(!p.contains(v4("10.0.0.7")));
        assert!(!p.contains(v4("10.0.0.0")));
        assert!(!p.contains(v4("fd00::2")));
        let bad = Pool::new(
            "10.0.0.0/29".parse::<IpNet>().unwrap(),
            Some(v4("10.0.0.7")),
        );
        assert!(bad.is_err());
        let other_family = Pool::new("10.0.0.0/29".parse::<IpNet>().unwrap(), Some(v4("fd00::1")));
        assert!(other_family.is_err());
    }

    /// host-local's IPv6 range: from ::1 (the gateway) to the all-ones host, no broadcast.
    #[test]
    fn ipv6_ranges_start_after_the_gateway_and_end_at_all_ones() {
        let p = pool("fd00:10:244:1::/64");
        assert_eq!(p.gateway(), v4("fd00:10:244:1::1"));
        assert_eq!(p.gateway_net().to_string(), "fd00:10:244:1::1/64");
        assert_eq!(p.capacity(), (1u128 << 64) - 2);
        let mut c = p.candidates(None);
        assert_eq!(c.next(), Some(v4("fd00:10:244:1::2")));
        assert_eq!(c.next(), Some(v4("fd00:10:244:1::3")));
        let small = pool("fd00::/126");
        assert_eq!(
            small.candidates(Some(v4("fd00::2"))).collect::<Vec<_>>(),
            [v4("fd00::3"), v4("fd00::2")]
        );
        assert!(small.contains(v4("fd00::3")));
        assert!(!small.contains(v4("fd00::")));
        assert!(!small.contains(v4("10.0.0.2")));
        // The widest range does not overflow.
        let all = pool("::/0");
        assert_eq!(all.capacity(), u128::MAX - 1);
        assert_eq!(
            all.candidates(Some(v4("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")))
                .next(),
            Some(v4("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
        );
    }

    #[test]
    fn ranges_hold_at_most_one_range_per_family_in_order() {
        let r = Ranges::new(vec![pool("fd00::/64"), pool("10.0.0.0/24")]).unwrap();
        assert_eq!(r.primary().subnet().to_string(), "fd00::/64");
        assert_eq!(
            r.v4().map(|p| p.subnet().to_string()).as_deref(),
            Some("10.0.0.0/24")
        );
        assert_eq!(r.for_family(v4("fd00:1::9")).map(Pool::is_ipv6), Some(true));
        assert!(Ranges::new(vec![]).is_err());
        assert!(Ranges::new(vec![pool("10.0.0.0/24"), pool("10.1.0.0/24")]).is_err());
        assert!(Ranges::new(vec![pool("fd00::/64"), pool("fd01::/64")]).is_err());
        let v6_only = Ranges::new(vec![pool("fd00::/64")]).unwrap();
        assert!(v6_only.v4().is_none());
    }
}
