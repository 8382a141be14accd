//! Internet checksum arithmetic (RFC 1071, incremental updates per RFC 1624).
//!
//! All words are read from and written to the packet in memory order: one's complement sums are
//! byte-order independent as long as the checksum field is treated the same way, so no byte
//! swapping is needed anywhere.

/// Folds a 64-bit one's complement accumulator to 16 bits.
#[inline(always)]
pub fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Accumulator change for a 32-bit word going from `old` to `new` (~m + m').
#[inline(always)]
pub fn diff32(old: u32, new: u32) -> u64 {
    u64::from(!old) + u64::from(new)
}

/// Accumulator change for a 16-bit word going from `old` to `new`.
#[inline(always)]
pub fn diff16(old: u16, new: u16) -> u64 {
    u64::from(!old) + u64::from(new)
}

/// Accumulator change for an address (4 words; IPv4 uses only the first).
#[inline(always)]
pub fn diff_addr(old: &[u32; 4], new: &[u32; 4], v6: bool) -> u64 {
    let mut d = diff32(old[0], new[0]);
    if v6 {
        d += diff32(old[1], new[1]) + diff32(old[2], new[2]) + diff32(old[3], new[3]);
    }
    d
}

/// HC' = ~(~HC + ~m + m') (RFC 1624, eqn. 3).
#[inline(always)]
pub fn apply(check: u16, diff: u64) -> u16 {
    !fold(u64::from(!check) + diff)
}

/// Final checksum from a full sum.
#[inline(always)]
pub fn finish(sum: u64) -> u16 {
    !fold(sum)
}
