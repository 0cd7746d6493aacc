//! Control-plane timings: a large service file applied to the kernel, and
//! a Maglev table for the most backends a service may have.

use std::time::Instant;

use forwarder::{
    config::ServiceFile,
    kernel::{Capacity, Kernel},
    maglev::{self, Member},
    state::ServiceTable,
};
use serde::{Deserialize, Serialize};

use super::{
    cost::{nodes, service_file},
    median,
};
use crate::fixture;

/// Services in the large file.
pub const SERVICES: u32 = 10_000;
/// Backends of the Maglev rebuild.
pub const MAGLEV_BACKENDS: u32 = 1_000;

/// Medians over the rounds, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlPlane {
    /// Parsing and validating the 10,000-service file.
    pub parse_ms: f64,
    /// Applying it to a freshly loaded datapath.
    pub apply_ms: f64,
    /// Applying a new version of it in which every service changed.
    pub reapply_ms: f64,
    /// Building one Maglev table for 1,000 backends.
    pub maglev_ms: f64,
    /// That table's length.
    pub maglev_len: u32,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Times everything `rounds` times.
pub fn measure(rounds: u32) -> anyhow::Result<ControlPlane> {
    let (mut parse, mut apply, mut reapply, mut build) = (vec![], vec![], vec![], vec![]);
    let text = service_file("snat", SERVICES, 2);
    // Every service moves from nodes 1 and 2 to nodes 2 and 3.
    let changed =
        text.replace("10.2.0.11:30080\", \"10.2.0.12:30080", "10.2.0.12:30080\", \"10.2.0.13:30080");
    let ns = fixture::network(&nodes(3))?;
    for _ in 0..rounds {
        let start = Instant::now();
        let file = ServiceFile::parse("bench.toml".as_ref(), &text)?;
        parse.push(ms(start));
        let next = ServiceFile::parse("bench.toml".as_ref(), &changed)?;
        ns.enter(|| -> anyhow::Result<()> {
            let capacity = Capacity { max_services: 16_384, max_backends: 32_768, ..Capacity::default() };
            let mut kernel = Kernel::load(capacity, aya_log::Level::Warn, None)?;
            let mut table = ServiceTable::new(capacity, Vec::new())?;
            let start = Instant::now();
            table.apply(&file, &mut kernel.maps)?;
            apply.push(ms(start));
            let start = Instant::now();
            table.apply(&next, &mut kernel.maps)?;
            reapply.push(ms(start));
            Ok(())
        })?;
    }
    let members: Vec<Member> = (0..MAGLEV_BACKENDS)
        .map(|i| Member {
            id: i,
            key: std::net::SocketAddrV4::new(std::net::Ipv4Addr::from(0x0a02_0000 + i), 30080),
            weight: 1,
        })
        .collect();
    let maglev_len = maglev::table_len(members.len());
    for _ in 0..rounds {
        let start = Instant::now();
        let table = maglev::build(&members, maglev_len);
        build.push(ms(start));
        anyhow::ensure!(table.len() == maglev_len as usize);
    }
    Ok(ControlPlane {
        parse_ms: median(parse),
        apply_ms: median(apply),
        reapply_ms: median(reapply),
        maglev_ms: median(build),
        maglev_len,
    })
}
