//! The data string's fast path: where a JSON string ends, found 64 bytes at a time with
//! no branch per escape, on CPUs with AVX2 (checked at run time by the caller).
//!
//! It only ever answers "the string is well formed up to its closing `"` at `end`" or
//! "don't know". Every fault (a bad escape, a control byte, the line ending inside the
//! string) is a "don't know", and the caller then scans the string again the exact way
//! ([`super::Scanner`]'s block scan), which names the fault and its position. So this
//! module decides no verdict of its own; the tests hold it to the exact scan.
//!
//! Per 64-byte block it classifies every byte at once (compares and two nibble
//! lookups): quotes, backslashes, control bytes, non-ASCII bytes, the bytes that may
//! follow a `\`, `u`, and hex digits. From the backslashes it derives which bytes are
//! escaped (runs of backslashes escape every other byte), and from those which quotes
//! are real and which `\u` escapes need four hex digits after them. A terminal's output
//! has an escape every ~25 bytes; the exact scan takes a loop turn per escape, this
//! takes none.

use std::arch::x86_64::{
    __m256i, _mm256_and_si256, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_max_epu8,
    _mm256_movemask_epi8, _mm256_set1_epi8, _mm256_setr_epi8, _mm256_shuffle_epi8,
    _mm256_srli_epi16,
};

/// Every other bit, starting at bit 1.
const ODD_BITS: u64 = 0xAAAA_AAAA_AAAA_AAAA;

/// Classes of a byte for the nibble lookups: a byte is in a class when its high nibble's
/// entry and its low nibble's entry both have the class's bit.
const CLASS_QUOTE_SLASH: i8 = 1; // `"` 0x22, `/` 0x2f
const CLASS_BACKSLASH: i8 = 2; // `\` 0x5c
const CLASS_BFN: i8 = 4; // `b` 0x62, `f` 0x66, `n` 0x6e
const CLASS_RT: i8 = 8; // `r` 0x72, `t` 0x74
const CLASS_U: i8 = 16; // `u` 0x75
const CLASS_DIGIT: i8 = 32; // 0x30..=0x39
const CLASS_HEX_LETTER: i8 = 64; // 0x41..=0x46, 0x61..=0x66
/// The bytes that may follow a `\`.
const CLASS_ESCAPABLE: i8 = CLASS_QUOTE_SLASH | CLASS_BACKSLASH | CLASS_BFN | CLASS_RT | CLASS_U;
const CLASS_HEX: i8 = CLASS_DIGIT | CLASS_HEX_LETTER;

/// Entry per low nibble (index 0..=15), twice (`vpshufb` looks up in each 16-byte lane).
const LOW_NIBBLE: [i8; 16] = {
    let mut t = [0i8; 16];
    t[0x2] = CLASS_QUOTE_SLASH | CLASS_BFN | CLASS_RT;
    t[0xf] = CLASS_QUOTE_SLASH;
    t[0xc] = CLASS_BACKSLASH;
    t[0x6] |= CLASS_BFN;
    t[0xe] = CLASS_BFN;
    t[0x4] = CLASS_RT;
    t[0x5] = CLASS_U;
    let mut d = 0;
    while d <= 9 {
        t[d] |= CLASS_DIGIT;
        d += 1;
    }
    let mut x = 1;
    while x <= 6 {
        t[x] |= CLASS_HEX_LETTER;
        x += 1;
    }
    t
};

/// Entry per high nibble; bytes >= 0x80 have none (they are never escapable nor hex).
const HIGH_NIBBLE: [i8; 16] = {
    let mut t = [0i8; 16];
    t[0x2] = CLASS_QUOTE_SLASH;
    t[0x3] = CLASS_DIGIT;
    t[0x4] = CLASS_HEX_LETTER;
    t[0x5] = CLASS_BACKSLASH;
    t[0x6] = CLASS_BFN | CLASS_HEX_LETTER;
    t[0x7] = CLASS_RT | CLASS_U;
    t
};

/// One 64-byte block's classes, bit i for byte i.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Block {
    pub quote: u64,
    pub backslash: u64,
    /// Bytes < 0x20: never allowed unescaped inside a string (and the padding past the
    /// line's end is zeros, so a scan never runs off the line).
    pub control: u64,
    pub non_ascii: u64,
    /// May follow a `\`: one of `"\/bfnrtu`.
    pub escapable: u64,
    pub u: u64,
    pub hex: u64,
}

/// The classes of the 64 bytes at `from`, as if `bytes` went on with zero bytes.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn classify(bytes: &[u8], from: usize) -> Block {
    let rest = bytes.get(from..).unwrap_or_default();
    if let Some(block) = rest.first_chunk::<64>() {
        return classify64(block);
    }
    // The line's last block. Rather than copy it into a zeroed buffer (a call and a copy
    // per string, since most strings end a line), classify the line's last 64 bytes and
    // shift what is before `from` out.
    if rest.is_empty() {
        // Past the line's end: all padding, which reads as control bytes.
        return Block {
            control: u64::MAX,
            ..Block::default()
        };
    }
    // The padding's bits (here `rest` is 1 to 63 bytes long).
    let padding = u64::MAX << rest.len();
    if let Some(last) = bytes.last_chunk::<64>() {
        let shift = 64 - rest.len();
        let b = classify64(last);
        return Block {
            quote: b.quote >> shift,
            backslash: b.backslash >> shift,
            control: b.control >> shift | padding,
            non_ascii: b.non_ascii >> shift,
            escapable: b.escapable >> shift,
            u: b.u >> shift,
            hex: b.hex >> shift,
        };
    }
    // A line shorter than a block.
    let mut padded = [0u8; 64];
    if let Some(head) = padded.get_mut(..rest.len()) {
        head.copy_from_slice(rest);
    }
    classify64(&padded)
}

/// The classes of 64 bytes.
#[target_feature(enable = "avx2")]
#[inline]
fn classify64(block: &[u8; 64]) -> Block {
    // SAFETY: each load reads 32 of the block's 64 bytes (unaligned loads are allowed);
    // AVX2 is enabled for this function.
    let (low, high) = unsafe {
        (
            _mm256_loadu_si256(block.as_ptr().cast()),
            _mm256_loadu_si256(block.as_ptr().add(32).cast()),
        )
    };
    let (a, b) = (classify32(low), classify32(high));
    let join = |x: u32, y: u32| u64::from(x) | u64::from(y) << 32;
    Block {
        quote: join(a.0, b.0),
        backslash: join(a.1, b.1),
        control: join(a.2, b.2),
        non_ascii: join(a.3, b.3),
        escapable: join(a.4, b.4),
        u: join(a.5, b.5),
        hex: join(a.6, b.6),
    }
}

/// [`classify`] for 32 bytes: (quote, backslash, control, non-ASCII, escapable, u, hex).
#[target_feature(enable = "avx2")]
fn classify32(v: __m256i) -> (u32, u32, u32, u32, u32, u32, u32) {
    let quote = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8));
    let backslash = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8));
    // Unsigned v <= 0x1f: max(v, 0x1f) == 0x1f.
    let low_limit = _mm256_set1_epi8(0x1f);
    let control = _mm256_cmpeq_epi8(_mm256_max_epu8(v, low_limit), low_limit);
    let nibble = _mm256_set1_epi8(0x0f);
    let low = _mm256_and_si256(v, nibble);
    // No 8-bit shift exists: shift 16-bit lanes and drop the bits that came across.
    let high = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nibble);
    let classes = _mm256_and_si256(
        _mm256_shuffle_epi8(lanes(LOW_NIBBLE), low),
        _mm256_shuffle_epi8(lanes(HIGH_NIBBLE), high),
    );
    (
        movemask(quote),
        movemask(backslash),
        movemask(control),
        movemask(v),
        in_class(classes, CLASS_ESCAPABLE),
        in_class(classes, CLASS_U),
        in_class(classes, CLASS_HEX),
    )
}

/// The top bit of each byte, as bits.
#[target_feature(enable = "avx2")]
#[inline]
fn movemask(v: __m256i) -> u32 {
    // movemask sets exactly 32 bits: the cast keeps them all.
    _mm256_movemask_epi8(v) as u32
}

/// The bytes whose `classes` have any bit of `class`.
#[target_feature(enable = "avx2")]
#[inline]
fn in_class(classes: __m256i, class: i8) -> u32 {
    let bits = _mm256_and_si256(classes, _mm256_set1_epi8(class));
    !movemask(_mm256_cmpeq_epi8(bits, _mm256_set1_epi8(0)))
}

/// A nibble table in both 16-byte lanes (`vpshufb` looks up within each lane).
#[target_feature(enable = "avx2")]
#[inline]
fn lanes(t: [i8; 16]) -> __m256i {
    _mm256_setr_epi8(
        t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10], t[11], t[12], t[13],
        t[14], t[15], t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10], t[11],
        t[12], t[13], t[14], t[15],
    )
}

/// Which bytes of a block are escaped, and which backslashes escape, given the block's
/// backslashes and whether its first byte is escaped by the block before (`carry`, 0 or
/// 1). In a run of backslashes every other one escapes the byte after it, starting with
/// the run's first; the run's parity is found with one subtraction per block (a borrow
/// runs through each run of backslashes) instead of a walk.
pub(super) fn escapes(backslash: u64, carry: u64) -> (u64, u64) {
    // A backslash escaped by the previous block starts no escape.
    let starters = backslash & !carry;
    // For a run starting on an even bit, "escapes" are its even bits and "escaped" the
    // odd bits after; a run starting on an odd bit is the opposite. The subtraction
    // flips, inside each run, the bits whose parity differs from the run's start.
    let code = (((starters << 1) | ODD_BITS).wrapping_sub(starters)) ^ ODD_BITS;
    let escaped = code ^ (backslash | carry);
    let escaper = code & backslash;
    (escaped, escaper)
}

/// Where the string whose content starts at `start` (after its opening `"`) ends: the
/// index of its closing `"`, and whether a non-ASCII byte came before it. `None` when
/// anything in it is not plainly well formed, for the exact scan to name.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn string_end(bytes: &[u8], start: usize) -> Option<(usize, bool)> {
    let mut block = start;
    let mut carry = 0u64;
    // Bits of this block that must be hex digits: the tail of a `\u` escape begun in the
    // block before.
    let mut hex_spill = 0u64;
    let mut non_ascii = false;
    loop {
        // SAFETY: the caller vouched for AVX2.
        let b = unsafe { classify(bytes, block) };
        let (escaped, escaper) = escapes(b.backslash, carry);
        carry = escaper >> 63;
        let ends = b.quote & !escaped;
        // The bytes of the string in this block: those before its end, if it ends here.
        let inside = if ends == 0 {
            u64::MAX
        } else {
            (1u64 << ends.trailing_zeros()) - 1
        };
        let u = u128::from(escaped & b.u & inside);
        let need_hex = (u << 1) | (u << 2) | (u << 3) | (u << 4);
        let need_hex_here = need_hex as u64 | hex_spill;
        hex_spill = (need_hex >> 64) as u64;
        let faults = ((escaped & !b.escapable) | b.control) & inside | need_hex_here & !b.hex;
        if faults != 0 {
            return None;
        }
        if ends != 0 {
            non_ascii |= b.non_ascii & inside != 0;
            return Some((block + ends.trailing_zeros() as usize, non_ascii));
        }
        non_ascii |= b.non_ascii != 0;
        block += 64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`escapes`] computes, one byte at a time.
    fn escapes_walk(backslash: u64, carry: u64) -> (u64, u64) {
        let (mut escaped, mut escaper) = (0u64, 0u64);
        let mut pending = carry == 1;
        for i in 0..64 {
            if pending {
                escaped |= 1 << i;
                pending = false;
            } else if backslash >> i & 1 == 1 {
                escaper |= 1 << i;
                pending = true;
            }
        }
        (escaped, escaper)
    }

    /// What [`classify`] computes, one byte at a time.
    fn classify_walk(bytes: &[u8], from: usize) -> Block {
        let mut b = Block::default();
        for i in 0..64 {
            let c = bytes.get(from + i).copied().unwrap_or(0);
            let bit = 1u64 << i;
            let set = |mask: &mut u64, yes: bool| *mask |= if yes { bit } else { 0 };
            set(&mut b.quote, c == b'"');
            set(&mut b.backslash, c == b'\\');
            set(&mut b.control, c < 0x20);
            set(&mut b.non_ascii, c >= 0x80);
            set(&mut b.escapable, b"\"\\/bfnrtu".contains(&c));
            set(&mut b.u, c == b'u');
            set(&mut b.hex, c.is_ascii_hexdigit());
        }
        b
    }

    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[test]
    fn escapes_match_a_walk_over_the_bits() {
        let mut state = 7;
        for round in 0..200_000u64 {
            // Dense and sparse backslashes, long runs, and runs across bit 63.
            let r = splitmix(&mut state);
            let backslash = match round % 4 {
                0 => r,
                1 => r & splitmix(&mut state),
                2 => r | splitmix(&mut state),
                _ => !0u64 << (r % 64) >> (splitmix(&mut state) % 64),
            };
            for carry in [0, 1] {
                assert_eq!(
                    escapes(backslash, carry),
                    escapes_walk(backslash, carry),
                    "backslash {backslash:#066b} carry {carry}"
                );
            }
        }
        for carry in [0, 1] {
            assert_eq!(escapes(!0, carry), escapes_walk(!0, carry));
            assert_eq!(escapes(0, carry), escapes_walk(0, carry));
        }
    }

    #[test]
    fn classes_match_a_walk_over_the_bytes() {
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: nothing to compare");
            return;
        }
        let all: Vec<u8> = (0..=255u8).collect();
        let mut state = 11;
        let random: Vec<u8> = (0..4096).map(|_| splitmix(&mut state) as u8).collect();
        // Long and short lines: the last block of each is classified its own ways.
        for bytes in [
            &all[..],
            &random[..],
            &random[..63],
            &random[..64],
            &random[..1],
            &[][..],
        ] {
            for from in 0..bytes.len() + 1 {
                // SAFETY: AVX2 was detected above.
                let fast = unsafe { classify(bytes, from) };
                assert_eq!(fast, classify_walk(bytes, from), "from {from}");
            }
        }
    }
}
