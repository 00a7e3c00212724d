//! IPv4 CIDR ranges and the pool decision: the next free, aligned, non-overlapping block of a
//! requested size, given the pool's ranges and the blocks already handed out (S4.8).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 network: an address whose host bits are zero, and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    start: u32,
    prefix: u8,
}

impl Cidr {
    /// A network from its first address and prefix length; `None` if host bits are set or the
    /// prefix is over 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Cidr> {
        if prefix > 32 {
            return None;
        }
        let start = u32::from(addr);
        (start & !mask(prefix) == 0).then_some(Cidr { start, prefix })
    }

    pub fn prefix(self) -> u8 {
        self.prefix
    }

    pub fn first(self) -> Ipv4Addr {
        Ipv4Addr::from(self.start)
    }

    /// The last address, as a number.
    fn end(self) -> u32 {
        self.start | !mask(self.prefix)
    }

    /// How many addresses the network holds.
    pub fn size(self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    pub fn overlaps(self, other: Cidr) -> bool {
        self.start <= other.end() && other.start <= self.end()
    }

    pub fn contains(self, other: Cidr) -> bool {
        self.start <= other.start && other.end() <= self.end()
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.first(), self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// Parses `a.b.c.d/n`. Host bits must be zero: `10.0.0.1/16` is refused with the network
    /// it probably meant.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a CIDR range; write it as ADDRESS/PREFIX, such as `10.0.0.0/16`"))?;
        let addr: Ipv4Addr =
            addr.parse().map_err(|_| format!("`{addr}` in `{s}` is not an IPv4 address, such as `10.0.0.0`"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("`{prefix}` in `{s}` is not a prefix length from 0 to 32"))?;
        Cidr::new(addr, prefix).ok_or_else(|| {
            let network = Ipv4Addr::from(u32::from(addr) & mask(prefix));
            format!("`{s}` has host bits set; the network is `{network}/{prefix}`")
        })
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Why no block could be handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// The requested block is larger than every range of the pool.
    TooLarge { prefix: u8, largest: u8 },
    /// Every block of that size overlaps one already taken.
    Exhausted { prefix: u8, taken: usize },
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::TooLarge { prefix, largest } => {
                write!(f, "a /{prefix} does not fit in the pool, whose largest range is a /{largest}")
            }
            AllocError::Exhausted { prefix, taken } => {
                write!(f, "the pool has no free /{prefix} left ({taken} range(s) are in use)")
            }
        }
    }
}

/// The first block of `/prefix` inside the pool's `ranges` (in the order given) that overlaps
/// nothing in `taken`. Blocks are aligned to their size, so that they are valid networks.
pub fn allocate(ranges: &[Cidr], taken: &[Cidr], prefix: u8) -> Result<Cidr, AllocError> {
    let largest = ranges.iter().map(|r| r.prefix).min().unwrap_or(32);
    if ranges.iter().all(|r| r.prefix > prefix) || prefix > 32 {
        return Err(AllocError::TooLarge { prefix, largest });
    }
    let step = 1u64 << (32 - u32::from(prefix));
    let mut sorted: Vec<Cidr> = taken.to_vec();
    sorted.sort();
    for range in ranges.iter().filter(|r| r.prefix <= prefix) {
        let mut at = u64::from(range.start);
        let end = u64::from(range.end());
        while at + step - 1 <= end {
            let Some(candidate) = Cidr::new(Ipv4Addr::from(at as u32), prefix) else { break };
            // Skip past whatever the candidate overlaps, rounded up to the next aligned block.
            match sorted.iter().find(|t| t.overlaps(candidate)) {
                None => return Ok(candidate),
                Some(t) => {
                    let past = u64::from(t.end()) + 1;
                    at = past.div_ceil(step) * step;
                }
            }
        }
    }
    Err(AllocError::Exhausted { prefix, taken: taken.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_and_print() {
        assert_eq!(c("10.0.0.0/16").to_string(), "10.0.0.0/16");
        assert_eq!(c("0.0.0.0/0").size(), 1 << 32);
        let cases = [
            ("10.0.0.1/16", "host bits set; the network is `10.0.0.0/16`"),
            ("10.0.0.0", "ADDRESS/PREFIX"),
            ("10.0.0.0/33", "prefix length"),
            ("10.0.0/8", "not an IPv4 address"),
            ("fd00::/8", "not an IPv4 address"),
        ];
        for (text, expected) in cases {
            let err = text.parse::<Cidr>().unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn overlap_and_containment() {
        assert!(c("10.0.0.0/16").overlaps(c("10.0.5.0/24")));
        assert!(c("10.0.5.0/24").overlaps(c("10.0.0.0/16")));
        assert!(!c("10.0.0.0/24").overlaps(c("10.0.1.0/24")));
        assert!(c("10.0.0.0/16").contains(c("10.0.255.0/24")));
        assert!(!c("10.0.0.0/24").contains(c("10.0.0.0/16")));
    }

    #[test]
    fn allocation_takes_the_next_free_aligned_block() {
        let pool = [c("10.0.0.0/22"), c("192.168.0.0/24")];
        let cases: &[(&[&str], u8, Result<&str, AllocError>)] = &[
            (&[], 24, Ok("10.0.0.0/24")),
            (&["10.0.0.0/24"], 24, Ok("10.0.1.0/24")),
            (&["10.0.1.0/24"], 24, Ok("10.0.0.0/24")),
            // A /25 taken in the middle pushes a /23 past it, aligned.
            (&["10.0.0.128/25"], 23, Ok("10.0.2.0/23")),
            (&["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"], 24, Ok("192.168.0.0/24")),
            (&["10.0.0.0/22", "192.168.0.0/25"], 25, Ok("192.168.0.128/25")),
            (&["10.0.0.0/22", "192.168.0.0/24"], 26, Err(AllocError::Exhausted { prefix: 26, taken: 2 })),
            (&[], 21, Err(AllocError::TooLarge { prefix: 21, largest: 22 })),
            // Ranges taken outside the pool do not matter.
            (&["172.16.0.0/12"], 22, Ok("10.0.0.0/22")),
        ];
        for (taken, prefix, expected) in cases {
            let taken: Vec<Cidr> = taken.iter().map(|t| c(t)).collect();
            let got = allocate(&pool, &taken, *prefix).map(|c| c.to_string());
            assert_eq!(got, expected.clone().map(str::to_owned), "{taken:?} /{prefix}");
        }
    }

    #[test]
    fn a_pool_fills_up_without_overlaps() {
        let pool = [c("10.1.0.0/20")];
        let mut taken = Vec::new();
        for prefix in [24, 26, 24, 22, 28, 24, 23, 24, 24, 25, 26, 24, 24, 24, 24, 24, 24] {
            match allocate(&pool, &taken, prefix) {
                Ok(block) => {
                    assert!(pool[0].contains(block), "{block}");
                    assert!(taken.iter().all(|t: &Cidr| !t.overlaps(block)), "{block} overlaps {taken:?}");
                    taken.push(block);
                }
                Err(AllocError::Exhausted { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        let used: u64 = taken.iter().map(|t| t.size()).sum();
        assert!(used <= pool[0].size());
        assert!(matches!(allocate(&pool, &taken, 20), Err(AllocError::Exhausted { .. })));
    }
}
