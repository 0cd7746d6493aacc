//! Finding the TCP timestamp option (RFC 7323) in the usual option
//! layouts: pure logic, shared by the datapath and host tests.

/// Option bytes looked at: enough for every layout below.
pub const OPTIONS_READ: usize = 16;

/// Option layouts that end in a timestamp option's kind and length (8, 10),
/// its value next, with the bytes that vary (MSS, window scale) masked:
/// a FIN's or other segment's as every common system sends it (NOP, NOP);
/// a Linux SYN's (MSS, SACK permitted); a BSD, macOS or Windows SYN's
/// (MSS, NOP, window scale, NOP, NOP). Options laid out otherwise count
/// as having no timestamp (the port search then waits, as without one).
const LAYOUTS: [(&[u8], &[u8]); 3] = [
    (&[1, 1, 8, 10], &[0xff; 4]),
    (&[2, 4, 0, 0, 4, 2, 8, 10], &[0xff, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff]),
    (
        &[2, 4, 0, 0, 1, 3, 3, 0, 1, 1, 8, 10],
        &[0xff, 0xff, 0, 0, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0xff, 0xff],
    ),
];

/// The timestamp value (host order) in TCP options starting `options`,
/// of which the first `len` bytes are the packet's; 0 if they are not laid
/// out as one of the usual layouts.
///
/// ```
/// use forwarder_common::ts::tsval_of;
/// let mut fin = [0u8; 16];
/// fin[..12].copy_from_slice(&[1, 1, 8, 10, 0, 0, 1, 2, 0, 0, 0, 9]);
/// assert_eq!(tsval_of(&fin, 12), 0x102);
/// assert_eq!(tsval_of(&fin, 7), 0); // cut short
/// ```
#[inline(always)]
#[must_use]
pub fn tsval_of(options: &[u8; OPTIONS_READ], len: usize) -> u32 {
    let mut layout = 0;
    while layout < LAYOUTS.len() {
        let (pattern, mask) = LAYOUTS[layout];
        let at = pattern.len();
        if at + 4 <= len && matches(options, pattern, mask) {
            return u32::from_be_bytes([options[at], options[at + 1], options[at + 2], options[at + 3]]);
        }
        layout += 1;
    }
    0
}

#[inline(always)]
fn matches(options: &[u8; OPTIONS_READ], pattern: &[u8], mask: &[u8]) -> bool {
    let mut i = 0;
    while i < pattern.len() {
        if options[i] & mask[i] != pattern[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded(bytes: &[u8]) -> [u8; OPTIONS_READ] {
        let mut options = [0u8; OPTIONS_READ];
        let n = bytes.len().min(OPTIONS_READ);
        options[..n].copy_from_slice(&bytes[..n]);
        options
    }

    #[test]
    fn finds_the_timestamp_in_each_usual_layout() {
        let cases: &[(&str, &[u8], u32)] = &[
            (
                "linux syn",
                &[2, 4, 5, 0xb4, 4, 2, 8, 10, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 1, 3, 3, 7],
                0xdead_beef,
            ),
            ("bsd syn", &[2, 4, 5, 0xb4, 1, 3, 3, 6, 1, 1, 8, 10, 0, 0, 0, 42, 0, 0, 0, 0, 4, 2, 0, 0], 42),
            ("fin", &[1, 1, 8, 10, 0x80, 0, 0, 1, 0, 0, 0, 0], 0x8000_0001),
            ("no timestamp", &[2, 4, 5, 0xb4, 1, 3, 3, 7, 1, 1, 4, 2], 0),
            ("sack before it", &[1, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2], 0),
            ("wrong length", &[1, 1, 8, 9, 0, 0, 0, 1, 0, 0, 0, 2], 0),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(tsval_of(&padded(bytes), bytes.len().min(OPTIONS_READ)), *want, "{name}");
        }
    }

    #[test]
    fn bytes_beyond_the_header_are_not_trusted() {
        let fin = padded(&[1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 0]);
        assert_eq!(tsval_of(&fin, 8), 7);
        for len in 0..8 {
            assert_eq!(tsval_of(&fin, len), 0, "{len}");
        }
    }
}
