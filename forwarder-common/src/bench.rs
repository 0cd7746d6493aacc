//! Layout shared by the benchmark's BPF programs and the bench runner (not
//! used by the forwarder itself).

/// Length of the generated frames: Ethernet + IPv4 + UDP + 18 bytes, the
/// classic 64-byte packet less its FCS.
pub const FRAME_LEN: usize = 60;

/// Length of a frame carrying a SYN with the options Linux sends (MSS,
/// SACK permitted, timestamps, window scale: 20 bytes), and no payload.
/// Generated where the run's buffer is at least this long.
pub const SYN_FRAME_LEN: usize = 14 + 20 + 20 + 20;

/// Room for the longest template: `SYN_FRAME_LEN` rounded up to 8 bytes.
pub const TEMPLATE_LEN: usize = SYN_FRAME_LEN.next_multiple_of(8);

/// `GEN` value: what the generator writes into every frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenConfig {
    /// The frame for flow 0, checksums valid: its first `FRAME_LEN`
    /// bytes, or `SYN_FRAME_LEN` where the run's buffer is at least that long.
    pub frame: [u8; TEMPLATE_LEN],
    /// Distinct flows to cycle through; 0 makes every packet a new flow.
    pub flows: u32,
    /// Flow `i` goes to the frame's destination address plus `i % vips`
    /// (1: all to the frame's).
    pub vips: u32,
    /// Non-zero: the frame is a node's answer, and flow `i` is written to
    /// its destination (the client's address and port) rather than its
    /// source; `vips` is not used.
    pub answers: u32,
}

/// `BOUNCE` value: the trivial forwarder's rewrite.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BounceConfig {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub ifindex: u32,
}

/// Source port and source address offset of flow `index`: ports
/// 1024..33791, then the next address.
#[inline(always)]
#[must_use]
pub const fn flow_source(index: u32) -> (u16, u32) {
    (1024 + (index & 0x7fff) as u16, index >> 15)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]` plain data with explicit padding.
    unsafe impl aya::Pod for super::GenConfig {}
    // SAFETY: `#[repr(C)]` plain data whose padding is explicit fields.
    unsafe impl aya::Pod for super::BounceConfig {}
}
