//! Per-CPU counters: no atomics, no shared cache lines.

use forwarder_common::{
    conntrack::FLAG_REPLY,
    counters::{Reason, Traffic},
    maps::FlowEntry,
};

use crate::maps::{BACKEND_TRAFFIC, REASONS, SERVICE_TRAFFIC};

#[inline(always)]
pub fn reason(reason: Reason) {
    if let Some(count) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot; nothing else on this CPU runs concurrently.
        unsafe { *count += 1 };
    }
}

#[inline(always)]
fn add(traffic: Option<*mut Traffic>, reply: bool, bytes: u64) {
    let Some(traffic) = traffic else { return };
    // SAFETY: a per-CPU slot, as above.
    let traffic = unsafe { &mut *traffic };
    if reply {
        traffic.packets_out += 1;
        traffic.bytes_out += bytes;
    } else {
        traffic.packets_in += 1;
        traffic.bytes_in += bytes;
    }
}

/// Counts one forwarded packet of `bytes` (IP length) against the flow's
/// service and backend.
#[inline(always)]
pub fn forwarded(entry: &FlowEntry, bytes: u16) {
    traffic(entry.service_id, entry.backend_id, entry.flags, bytes);
}

/// Counts one forwarded packet of `bytes` against a service and backend,
/// in the direction `flags` (an entry's) says.
#[inline(always)]
pub fn traffic(service_id: u32, backend_id: u32, flags: u8, bytes: u16) {
    let reply = flags & FLAG_REPLY != 0;
    add(SERVICE_TRAFFIC.get_ptr_mut(service_id), reply, u64::from(bytes));
    add(BACKEND_TRAFFIC.get_ptr_mut(backend_id), reply, u64::from(bytes));
}

#[inline(always)]
pub fn new_flow(entry: &FlowEntry) {
    for traffic in
        [SERVICE_TRAFFIC.get_ptr_mut(entry.service_id), BACKEND_TRAFFIC.get_ptr_mut(entry.backend_id)]
            .into_iter()
            .flatten()
    {
        // SAFETY: a per-CPU slot, as above.
        unsafe { (*traffic).new_flows += 1 };
    }
}
