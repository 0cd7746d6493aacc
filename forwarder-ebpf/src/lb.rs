//! Service lookup and backend choice (Maglev).

use forwarder_common::{
    counters::Reason,
    maps::{Backend, FlowKey, NO_BACKEND, ServiceEntry, ServiceKey},
};

use crate::maps::{BACKENDS, MAGLEV, SERVICES};

/// The service a packet's destination (VIP, port, protocol) belongs to.
#[inline(always)]
pub fn service(key: &FlowKey) -> Option<ServiceEntry> {
    let service_key = ServiceKey { vip: key.dst, port: key.dport, proto: key.proto, _pad: 0 };
    // SAFETY: service values are replaced whole by user space, never
    // written in place; the copy is taken at once.
    unsafe { SERVICES.get(service_key).copied() }
}

/// Picks the backend for a new flow from the service's Maglev table.
#[inline(always)]
pub fn pick(service: &ServiceEntry, hash: u32) -> Result<(u32, Backend), Reason> {
    if service.table_len == 0 {
        return Err(Reason::DropNoBackend);
    }
    let slot = hash % service.table_len;
    // SAFETY: tables are swapped whole (outer map update), never edited in
    // place, so the slot read is from one consistent table.
    let id = unsafe { MAGLEV.get_value(&service.id, &slot) }.copied();
    let id = match id {
        Some(id) if id != NO_BACKEND => id,
        _ => return Err(Reason::DropNoBackend),
    };
    let backend = BACKENDS.get(id).copied().ok_or(Reason::DropNoBackend)?;
    Ok((id, backend))
}
