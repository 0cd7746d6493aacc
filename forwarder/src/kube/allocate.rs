//! Giving each LoadBalancer Service a VIP from the pools.
//!
//! Three passes, each in the Services' order (oldest first, then by
//! namespace and name), so that the result depends on the cluster only:
//!
//! 1. a Service that asks for an address (annotation
//!    [`REQUESTED_IP`](super::translate::REQUESTED_IP), else
//!    `spec.loadBalancerIP`) gets it if it is in a pool and free for it,
//!    else an error: it never silently gets another one;
//! 2. a Service keeps the address of its `status.loadBalancer.ingress` if
//!    that is still in a pool and free for it (so VIPs are stable across
//!    restarts and unrelated changes);
//! 3. the others get the lowest free address of the first pool that has one
//!    (network and broadcast addresses of pools shorter than /31 are never
//!    handed out); a Service with a sharing key first joins a VIP already
//!    used by Services of the same key whose ports do not clash.
//!
//! An address is free for a Service when nothing uses it, or when every
//! user is a Service with the same sharing key, and no user (hand-written
//! services included) has one of its ports. Hand-written services' VIPs are
//! never handed out by pass 3.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;

use super::problem::ServiceKey;
use crate::config::Protocol;

/// One VIP:port:protocol a Service needs.
pub type Listener = (u16, Protocol);

/// What a Service asks of the allocator.
#[derive(Clone, Debug)]
pub struct Claim {
    pub key: ServiceKey,
    /// The address it asks for, as written.
    pub requested: Option<String>,
    /// The addresses in its status.
    pub current: Vec<String>,
    /// Its sharing key: Services with the same one may share a VIP.
    pub sharing: Option<String>,
    pub listeners: Vec<Listener>,
}

/// A service of the file that the controller does not own.
#[derive(Clone, Debug)]
pub struct HandWritten {
    pub name: String,
    pub vip: Ipv4Addr,
    pub listener: Listener,
}

#[derive(Clone, Debug)]
enum Owner {
    Service { key: ServiceKey, sharing: Option<String> },
    HandWritten(String),
}

#[derive(Debug)]
struct User {
    owner: Owner,
    listeners: Vec<Listener>,
}

/// Addresses and who uses them.
struct Book<'a> {
    pools: &'a [Ipv4Net],
    users: BTreeMap<Ipv4Addr, Vec<User>>,
}

/// The VIP of every Service that got one, and why the others did not.
pub fn allocate(
    pools: &[Ipv4Net],
    hand_written: &[HandWritten],
    claims: &[Claim],
) -> (BTreeMap<ServiceKey, Ipv4Addr>, BTreeMap<ServiceKey, String>) {
    let mut book = Book { pools, users: BTreeMap::new() };
    for HandWritten { name, vip, listener } in hand_written {
        let user = User { owner: Owner::HandWritten(name.clone()), listeners: vec![*listener] };
        book.users.entry(*vip).or_default().push(user);
    }
    let mut vips = BTreeMap::new();
    let mut errors = BTreeMap::new();
    for claim in claims.iter().filter(|c| c.requested.is_some()) {
        let text = claim.requested.as_deref().unwrap_or_default();
        match book.check(text, claim) {
            Ok(vip) => {
                vips.insert(claim.key.clone(), book.take(vip, claim));
            }
            Err(message) => {
                errors.insert(claim.key.clone(), format!("requested address {text}: {message}"));
            }
        }
    }
    for claim in claims.iter().filter(|c| c.requested.is_none()) {
        if let Some(vip) = claim.current.iter().find_map(|text| book.check(text, claim).ok()) {
            vips.insert(claim.key.clone(), book.take(vip, claim));
        }
    }
    for claim in claims.iter().filter(|c| c.requested.is_none()) {
        if vips.contains_key(&claim.key) {
            continue;
        }
        match book.lowest_free(claim) {
            Some(vip) => {
                vips.insert(claim.key.clone(), book.take(vip, claim));
            }
            None => {
                errors.insert(claim.key.clone(), book.exhausted());
            }
        }
    }
    (vips, errors)
}

impl Book<'_> {
    /// Whether `text` is an address this Service may have.
    fn check(&self, text: &str, claim: &Claim) -> Result<Ipv4Addr, String> {
        let vip: Ipv4Addr = text.parse().map_err(|_| "not an IPv4 address".to_owned())?;
        let Some(pool) = self.pools.iter().find(|pool| pool.contains(&vip)) else {
            return Err(format!("not in any pool ({})", self.pool_list()));
        };
        if !usable(pool, vip) {
            return Err(format!("the network or broadcast address of pool {pool}"));
        }
        self.fits(vip, claim)?;
        Ok(vip)
    }

    /// Whether the users of `vip` leave room for this Service.
    fn fits(&self, vip: Ipv4Addr, claim: &Claim) -> Result<(), String> {
        for user in self.users.get(&vip).into_iter().flatten() {
            if let Some((port, protocol)) = user.listeners.iter().find(|l| claim.listeners.contains(l)) {
                let owner = match &user.owner {
                    Owner::Service { key, .. } => format!("Service {key}"),
                    Owner::HandWritten(name) => format!("the hand-written service {name:?}"),
                };
                return Err(format!("{vip}:{port}/{protocol} is already used by {owner}"));
            }
            if let Owner::Service { key, sharing } = &user.owner
                && (sharing.is_none() || *sharing != claim.sharing)
            {
                return Err(format!(
                    "{vip} is used by Service {key}; to share it both need the same {} annotation",
                    super::translate::SHARING_KEY
                ));
            }
        }
        Ok(())
    }

    fn lowest_free(&self, claim: &Claim) -> Option<Ipv4Addr> {
        // `fits` then checks the key and the ports.
        let all_services =
            |users: &Vec<User>| users.iter().all(|u| matches!(&u.owner, Owner::Service { .. }));
        let shared = self
            .users
            .iter()
            .filter(|(vip, users)| claim.sharing.is_some() && all_services(users) && self.in_pool(**vip))
            .find(|(vip, _)| self.fits(**vip, claim).is_ok())
            .map(|(vip, _)| *vip);
        shared.or_else(|| {
            self.pools
                .iter()
                .flat_map(|pool| pool.hosts().filter(move |vip| usable(pool, *vip)))
                .find(|vip| !self.users.contains_key(vip))
        })
    }

    fn in_pool(&self, vip: Ipv4Addr) -> bool {
        self.pools.iter().any(|pool| pool.contains(&vip) && usable(pool, vip))
    }

    fn take(&mut self, vip: Ipv4Addr, claim: &Claim) -> Ipv4Addr {
        let owner = Owner::Service { key: claim.key.clone(), sharing: claim.sharing.clone() };
        self.users.entry(vip).or_default().push(User { owner, listeners: claim.listeners.clone() });
        vip
    }

    fn exhausted(&self) -> String {
        if self.pools.is_empty() {
            return "no address pools are configured (--pool, or pools in the [kube] table)".to_owned();
        }
        format!("no free address left in the pools ({})", self.pool_list())
    }

    fn pool_list(&self) -> String {
        self.pools.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }
}

/// Pools shorter than /31 keep their network and broadcast addresses out.
fn usable(pool: &Ipv4Net, vip: Ipv4Addr) -> bool {
    pool.prefix_len() >= 31 || (vip != pool.network() && vip != pool.broadcast())
}
