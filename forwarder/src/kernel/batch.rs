//! Batched map updates and deletes (`BPF_MAP_UPDATE_BATCH`,
//! `BPF_MAP_DELETE_BATCH`), which aya 0.14 does not wrap.
//!
//! They matter for the map of Maglev tables: the kernel waits for an RCU
//! grace period after every update of a map-of-maps (milliseconds each),
//! but only once per batch (Linux 6.7+).

use std::os::fd::{AsRawFd as _, BorrowedFd};

use aya_obj::generated::{bpf_attr, bpf_cmd};

fn batch(
    cmd: bpf_cmd,
    map: BorrowedFd<'_>,
    keys: *const u8,
    values: *const u8,
    count: usize,
) -> std::io::Result<()> {
    if count == 0 {
        return Ok(());
    }
    // SAFETY: all-zeroes is the "unset" state of every bpf_attr field.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.batch.keys = keys as u64;
    attr.batch.values = values as u64;
    attr.batch.count = count as u32;
    attr.batch.map_fd = map.as_raw_fd() as u32;
    // SAFETY: `attr` is a valid bpf_attr; keys and values point to `count`
    // elements of the map's key and value sizes, alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd as libc::c_long, &attr, size_of::<bpf_attr>()) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Sets `keys[i]` to `values[i]` for every i, in one call.
pub fn update<K, V>(map: BorrowedFd<'_>, keys: &[K], values: &[V]) -> std::io::Result<()> {
    assert_eq!(keys.len(), values.len());
    batch(bpf_cmd::BPF_MAP_UPDATE_BATCH, map, keys.as_ptr().cast(), values.as_ptr().cast(), keys.len())
}

/// Deletes `keys`, in one call. Every key must exist.
pub fn delete<K>(map: BorrowedFd<'_>, keys: &[K]) -> std::io::Result<()> {
    batch(bpf_cmd::BPF_MAP_DELETE_BATCH, map, keys.as_ptr().cast(), std::ptr::null(), keys.len())
}
