//! Map commands aya 0.14 does not wrap for hash maps: batched updates and
//! deletes (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`) and
//! lookup-and-delete ([`take`]).
//!
//! Batches matter for the map of Maglev tables: the kernel waits for an RCU
//! grace period after every update of a map-of-maps (milliseconds each),
//! but only once per batch (Linux 6.7+).

use std::{
    borrow::Borrow,
    mem::MaybeUninit,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{HashMap, IterableMap as _, MapData},
};
use aya_obj::generated::{bpf_attr, bpf_cmd};

fn io_error(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
}

/// Checks that `K` (and `V`, if any) are the map's key and value sizes, as
/// aya's typed maps do: the kernel reads `count` elements of those sizes.
fn check_sizes<K, V>(map: &MapData, with_values: bool) -> std::io::Result<()> {
    let info = map.info().map_err(|err| io_error(err.to_string()))?;
    let (key, value) = (info.key_size() as usize, info.value_size() as usize);
    if key != size_of::<K>() || (with_values && value != size_of::<V>()) {
        return Err(io_error(format!(
            "batch of {}-byte keys / {}-byte values for a map of {key} / {value}",
            size_of::<K>(),
            size_of::<V>()
        )));
    }
    Ok(())
}

fn batch(
    cmd: bpf_cmd,
    map: &MapData,
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
    attr.batch.count = u32::try_from(count).map_err(|_| io_error(format!("a batch of {count}")))?;
    attr.batch.map_fd = map.fd().as_fd().as_raw_fd() as u32;
    // SAFETY: `attr` is a valid bpf_attr; keys and values point to `count`
    // elements of the map's key and value sizes (checked by the callers),
    // alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd as libc::c_long, &attr, size_of::<bpf_attr>()) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Deletes `key` and returns the value it held (`None`: there was none),
/// atomically: what is returned is exactly what was deleted, whatever the
/// datapath writes meanwhile (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`, hash maps
/// since Linux 5.14).
pub fn take<T: Borrow<MapData>, K: Pod, V: Pod>(
    map: &mut HashMap<T, K, V>,
    key: &K,
) -> std::io::Result<Option<V>> {
    let mut value = MaybeUninit::<V>::zeroed();
    // SAFETY: all-zeroes is the "unset" state of every bpf_attr field.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: plain integer fields of the union member the command reads.
    unsafe {
        let elem = &mut attr.__bindgen_anon_2;
        elem.map_fd = map.map().fd().as_fd().as_raw_fd() as u32;
        elem.key = std::ptr::from_ref(key) as u64;
        elem.__bindgen_anon_1.value = value.as_mut_ptr() as u64;
    }
    let cmd = bpf_cmd::BPF_MAP_LOOKUP_AND_DELETE_ELEM;
    // SAFETY: `attr` is a valid bpf_attr; key and value point to a `K` and
    // a `V`, the map's key and value sizes (checked when aya made the typed
    // map), alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd as libc::c_long, &attr, size_of::<bpf_attr>()) };
    if rc == 0 {
        // SAFETY: the kernel wrote a whole `V`, and `V: Pod` has no invalid bit patterns.
        return Ok(Some(unsafe { value.assume_init() }));
    }
    match std::io::Error::last_os_error() {
        err if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        err => Err(err),
    }
}

/// Sets `keys[i]` to `values[i]` for every i, in one call.
pub fn update<K: Pod, V: Pod>(map: &MapData, keys: &[K], values: &[V]) -> std::io::Result<()> {
    if keys.len() != values.len() {
        return Err(io_error(format!("{} keys for {} values", keys.len(), values.len())));
    }
    check_sizes::<K, V>(map, true)?;
    batch(bpf_cmd::BPF_MAP_UPDATE_BATCH, map, keys.as_ptr().cast(), values.as_ptr().cast(), keys.len())
}

/// Deletes `keys`, in one call. Every key must exist.
pub fn delete<K: Pod>(map: &MapData, keys: &[K]) -> std::io::Result<()> {
    check_sizes::<K, ()>(map, false)?;
    batch(bpf_cmd::BPF_MAP_DELETE_BATCH, map, keys.as_ptr().cast(), std::ptr::null(), keys.len())
}
