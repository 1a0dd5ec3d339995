//! Header maps in the proxy-wasm wire form: a little-endian `u32` count, then a `u32` name
//! length and a `u32` value length per pair, then each name and each value followed by a NUL.
//! The host hands request headers over in this form; parsing borrows from its buffer, so reading
//! a request's headers allocates nothing (the list is on the stack up to [`Pairs`]' size).

use smallvec::SmallVec;

/// A request's headers as the core reads them: lower-case names and raw values, borrowed from
/// the host. Up to 32 pairs are kept on the stack (requests seldom have more).
pub type Pairs<'a> = SmallVec<[(&'a str, &'a [u8]); 32]>;

/// The pairs of a serialized map, borrowed from `bytes`. A pair whose name is not UTF-8 is
/// left out (no configured name could match it); a truncated or inconsistent buffer gives the
/// pairs that are whole.
pub fn parse_pairs(bytes: &[u8]) -> Pairs<'_> {
    let mut pairs = Pairs::new();
    parse_pairs_into(bytes, &mut pairs);
    pairs
}

/// [`parse_pairs`] into `pairs`, filled in place (the list is a kilobyte: the request path reads
/// its headers this way, without a copy of it).
pub fn parse_pairs_into<'a>(bytes: &'a [u8], pairs: &mut Pairs<'a>) {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(count) = word(0) else {
        return;
    };
    // Each pair needs 8 bytes of sizes and 2 NULs: a count the buffer cannot hold is a lie.
    let count = count.min(bytes.len() / 10);
    pairs.reserve(count);
    let mut at = 4 + count * 8;
    for n in 0..count {
        let (Some(name_len), Some(value_len)) = (word(4 + n * 8), word(8 + n * 8)) else {
            break;
        };
        let Some(name) = at.checked_add(name_len).and_then(|end| bytes.get(at..end)) else {
            break;
        };
        at += name_len + 1;
        let Some(value) = at.checked_add(value_len).and_then(|end| bytes.get(at..end)) else {
            break;
        };
        at += value_len + 1;
        if let Ok(name) = std::str::from_utf8(name) {
            pairs.push((name, value));
        }
    }
}

/// The wire form of `pairs`.
pub fn serialize_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(n, v)| 10 + n.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let pairs = [
            (":path", "/a?b=c"),
            ("authorization", "Bearer x"),
            ("empty", ""),
        ];
        let wire = serialize_pairs(&pairs);
        let back = parse_pairs(&wire);
        assert_eq!(back.len(), 3);
        for ((n, v), (bn, bv)) in pairs.iter().zip(&back) {
            assert_eq!(n, bn);
            assert_eq!(v.as_bytes(), *bv);
        }
        assert!(parse_pairs(&serialize_pairs(&[])).is_empty());
    }

    #[test]
    fn hostile_buffers_give_whole_pairs_only() {
        assert!(parse_pairs(&[]).is_empty());
        assert!(parse_pairs(&[1, 0]).is_empty());
        // A count far beyond the buffer.
        assert!(parse_pairs(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]).is_empty());
        let wire = serialize_pairs(&[("a", "1"), ("b", "2")]);
        for cut in 0..wire.len() {
            let pairs = parse_pairs(&wire[..cut]);
            assert!(pairs.len() <= 2);
        }
        // Sizes that overflow.
        let mut bad = 1u32.to_le_bytes().to_vec();
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        bad.extend_from_slice(&[0; 8]);
        assert!(parse_pairs(&bad).is_empty());
        // A name that is not UTF-8 is left out, the rest stays.
        let mut wire = serialize_pairs(&[("x", "1"), ("b", "2")]);
        let name_at = 4 + 2 * 8;
        wire[name_at] = 0xff;
        let pairs = parse_pairs(&wire);
        assert_eq!(pairs[..], [("b", &b"2"[..])]);
    }
}
