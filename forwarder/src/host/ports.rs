//! The host's own ephemeral ports, which SNAT ports must stay clear of: a
//! connection the host opens itself (a health check, say) from a port in
//! the SNAT range could match a translated flow's reply entry. Read from
//! the network namespace's `ip_local_port_range`, less
//! `ip_local_reserved_ports`.

use std::{ops::RangeInclusive, path::Path};

use forwarder_common::snat::{SNAT_PORT_MAX, SNAT_PORT_MIN};

const RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortsError {
    #[error("{path}: {message}")]
    Read { path: &'static str, message: String },
    #[error(
        "the host's ephemeral ports ({lo}-{hi}, net.ipv4.ip_local_port_range) overlap the SNAT ports \
         {SNAT_PORT_MIN}-{SNAT_PORT_MAX} ({overlap} ports in common): the host's own connections could take \
         a translated flow's replies; set it to start above {SNAT_PORT_MAX} \
         (sysctl -w net.ipv4.ip_local_port_range=\"32768 60999\") or reserve the overlap \
         (net.ipv4.ip_local_reserved_ports)"
    )]
    Overlap { lo: u16, hi: u16, overlap: u32 },
}

/// Checks that the host's ephemeral ports leave the SNAT range alone.
pub fn check_snat_range() -> Result<(), PortsError> {
    let read = |path: &'static str| {
        std::fs::read_to_string(Path::new(path))
            .map_err(|err| PortsError::Read { path, message: err.to_string() })
    };
    let range =
        parse_range(&read(RANGE)?).ok_or(PortsError::Read { path: RANGE, message: "unreadable".into() })?;
    // Missing on some kernels: nothing reserved.
    let reserved = read(RESERVED).ok().map(|text| parse_list(&text)).unwrap_or_default();
    check(range, &reserved)
}

fn check(range: RangeInclusive<u16>, reserved: &[RangeInclusive<u16>]) -> Result<(), PortsError> {
    let overlap = (SNAT_PORT_MIN..=SNAT_PORT_MAX)
        .filter(|port| range.contains(port) && !reserved.iter().any(|r| r.contains(port)))
        .count() as u32;
    if overlap == 0 {
        return Ok(());
    }
    Err(PortsError::Overlap { lo: *range.start(), hi: *range.end(), overlap })
}

/// `"32768\t60999\n"`.
fn parse_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(lo)), Some(Ok(hi))) = (fields.next(), fields.next()) else { return None };
    Some(lo..=hi)
}

/// `"8080,9000-9100\n"` (empty when nothing is reserved).
fn parse_list(text: &str) -> Vec<RangeInclusive<u16>> {
    text.trim()
        .split(',')
        .filter_map(|item| match item.split_once('-') {
            Some((lo, hi)) => Some(lo.trim().parse().ok()?..=hi.trim().parse().ok()?),
            None => item.trim().parse().ok().map(|port| port..=port),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_count_unreserved_ports_only() {
        let cases: [(&str, &str, Option<u32>); 5] = [
            ("Linux's default", "32768 60999", None),
            ("widened", "20000\t60999\n", Some(12768)),
            ("widened, the overlap reserved", "20000 60999", None),
            ("one port in common", "32767 60999", Some(1)),
            ("below the range", "100 1023", None),
        ];
        for (what, range, want) in cases {
            let reserved = if what.contains("reserved") { parse_list("20000-32767\n") } else { Vec::new() };
            let got = check(parse_range(range).unwrap(), &reserved).err().map(|e| match e {
                PortsError::Overlap { overlap, .. } => overlap,
                other => panic!("{other}"),
            });
            assert_eq!(got, want, "{what}");
        }
        assert_eq!(parse_list("8080,9000-9002\n"), [8080..=8080, 9000..=9002]);
        assert_eq!(parse_list("\n"), Vec::<RangeInclusive<u16>>::new());
    }
}
