//! Address ranges (CIDR blocks): the networks the admin console is open to
//! (`LABLINK_ADMIN_ALLOWED_CIDRS`). Pure parsing and matching; the caller supplies the
//! address (API Gateway's `sourceIp`, never a client header).

use std::net::IpAddr;

/// One block: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    base: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let base: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address range"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix must be 0 to {max}"))?,
        };
        // An IPv4 range written as IPv6 (`::ffff:10.0.0.0/104`) is that IPv4 range, as
        // addresses are compared (`canonical`).
        if let IpAddr::V6(v6) = base
            && let Some(v4) = v6.to_ipv4_mapped()
            && prefix >= 96
        {
            return Ok(Self {
                base: IpAddr::V4(v4),
                prefix: prefix - 96,
            });
        }
        Ok(Self { base, prefix })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.base, canonical(addr)) {
            (IpAddr::V4(b), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(b) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(b), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(b) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is that IPv4 address.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// A list of blocks; an address is allowed when any block contains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrList(Vec<Cidr>);

impl CidrList {
    /// Comma-separated blocks (CloudFormation's `CommaDelimitedList` joined by commas).
    /// An empty list is an error: it would lock everyone out; "open to all" is
    /// `0.0.0.0/0,::/0`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let blocks = s
            .split(',')
            .filter(|b| !b.trim().is_empty())
            .map(Cidr::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if blocks.is_empty() {
            return Err("no address range".into());
        }
        Ok(Self(blocks))
    }

    /// Whether `addr` (a textual address; anything else is refused) is in a block.
    pub fn allows(&self, addr: &str) -> bool {
        addr.trim()
            .parse::<IpAddr>()
            .is_ok_and(|a| self.0.iter().any(|c| c.contains(a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_contain_their_addresses_only() {
        let l = CidrList::parse("10.1.0.0/16, 192.0.2.7 ,2001:db8::/32").unwrap();
        assert!(l.allows("10.1.255.3"));
        assert!(!l.allows("10.2.0.1"));
        assert!(l.allows("192.0.2.7") && !l.allows("192.0.2.8"));
        assert!(l.allows("2001:db8:ffff::1") && !l.allows("2001:db9::1"));
        assert!(
            l.allows("::ffff:10.1.2.3"),
            "IPv4-mapped IPv6 is the IPv4 address"
        );
        let mapped = CidrList::parse("::ffff:198.51.100.0/120").unwrap();
        assert!(mapped.allows("198.51.100.9") && mapped.allows("::ffff:198.51.100.9"));
        assert!(!mapped.allows("198.51.101.9"));
        assert!(!l.allows("unknown") && !l.allows(""));
        let all = CidrList::parse("0.0.0.0/0,::/0").unwrap();
        assert!(all.allows("203.0.113.9") && all.allows("2001:db8::1"));
    }

    #[test]
    fn bad_lists_are_named() {
        assert!(CidrList::parse("").is_err());
        assert!(CidrList::parse("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(CidrList::parse("example.org").is_err());
    }
}
