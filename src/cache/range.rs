//! A `Range` request answered from a stored complete response (RFC 9110 §14): one byte range
//! gets a 206 with that slice, a range past the end a 416, anything else (several ranges, an
//! unknown unit, a malformed value) the whole 200, as §14.2 lets a server ignore `Range`.

use std::ops::Range;

/// What to answer a `Range` header with, for a representation of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    Whole,
    Part(Range<usize>),
    Unsatisfiable,
}

/// Reads one `bytes=` range: `first-last`, `first-`, or `-suffix` (§14.1.2).
pub fn byte_range(header: &str, len: usize) -> RangeAnswer {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let number = |text: &str| -> Option<usize> {
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().unwrap_or(usize::MAX))
    };
    match (number(first), number(last)) {
        (None, Some(suffix)) if first.is_empty() => {
            if suffix == 0 || len == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Part(len.saturating_sub(suffix)..len)
            }
        }
        (Some(first), _) if first >= len => RangeAnswer::Unsatisfiable,
        (Some(first), None) if last.is_empty() => RangeAnswer::Part(first..len),
        (Some(first), Some(last)) if last >= first => {
            RangeAnswer::Part(first..last.saturating_add(1).min(len))
        }
        _ => RangeAnswer::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9110_14_1_2_one_byte_range_of_each_form() {
        assert_eq!(byte_range("bytes=0-9", 100), RangeAnswer::Part(0..10));
        assert_eq!(byte_range("bytes=90-200", 100), RangeAnswer::Part(90..100));
        assert_eq!(byte_range("bytes=95-", 100), RangeAnswer::Part(95..100));
        assert_eq!(byte_range("bytes=-5", 100), RangeAnswer::Part(95..100));
        assert_eq!(byte_range("bytes=-500", 100), RangeAnswer::Part(0..100));
    }

    #[test]
    fn rfc9110_14_2_unsatisfiable_ranges_and_ones_a_server_may_ignore() {
        assert_eq!(byte_range("bytes=100-", 100), RangeAnswer::Unsatisfiable);
        assert_eq!(byte_range("bytes=-0", 100), RangeAnswer::Unsatisfiable);
        for ignored in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-1",
            "bytes=x-1",
            "bytes=1",
        ] {
            assert_eq!(byte_range(ignored, 100), RangeAnswer::Whole, "{ignored}");
        }
    }
}
