//! Partial responses (RFC 9111 §3.3, §3.4): a stored 206 holds one byte range of a
//! representation whose complete length it knows. A later range it covers is served from it;
//! a later 206 for the same representation (the same strong validator) is combined with it,
//! the new response's header fields winning and the stored ones kept otherwise, and a
//! combination that covers every byte becomes the complete 200.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;

use super::conditional::updated_fields;
use super::range::{byte_range, RangeAnswer};

/// The part of a representation a stored 206 holds: from `start`, as many bytes as its body
/// has, of a representation `complete` bytes long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub start: u64,
    pub complete: u64,
}

impl Part {
    /// The part a 206's `Content-Range` names (RFC 9110 §14.4): one satisfied byte range of a
    /// known complete length. `None` for anything else (`*` as the length, several ranges in a
    /// multipart body, an unsatisfied range), which is not stored.
    pub fn of(headers: &HeaderMap) -> Option<(Part, u64)> {
        let mut values = headers.get_all(header::CONTENT_RANGE).iter();
        let (value, None) = (values.next()?, values.next()) else {
            return None;
        };
        let range = value.to_str().ok()?.trim().strip_prefix("bytes ")?;
        let (span, complete) = range.split_once('/')?;
        let (first, last) = span.split_once('-')?;
        let number = |text: &str| -> Option<u64> {
            let text = text.trim();
            (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse().ok())
                .flatten()
        };
        let (first, last, complete) = (number(first)?, number(last)?, number(complete)?);
        (first <= last && last < complete).then(|| {
            let part = Part {
                start: first,
                complete,
            };
            (part, last - first + 1)
        })
    }

    /// The bytes of the representation that `range` (a `Range` header's value) asks for, if
    /// this part of `len` bytes holds all of them, as offsets into the part's body.
    pub fn covers(&self, range: &str, len: usize) -> Option<Range<usize>> {
        let complete = usize::try_from(self.complete).ok()?;
        let start = usize::try_from(self.start).ok()?;
        match byte_range(range, complete) {
            RangeAnswer::Part(asked) if asked.start >= start && asked.end <= start + len => {
                Some(asked.start - start..asked.end - start)
            }
            _ => None,
        }
    }

    /// `Content-Range` for `len` bytes at `offset` into this part.
    pub fn content_range(&self, offset: usize, len: usize) -> HeaderValue {
        let first = self.start + offset as u64;
        let last = first + len as u64 - 1;
        let value = format!("bytes {first}-{last}/{}", self.complete);
        HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static("bytes */0"))
    }
}

/// A stored part and a new one combined (§3.4), when they are parts of the same
/// representation (the same complete length and the same strong validator) that overlap or
/// touch: the new bytes and header fields win. `None` when they may not or cannot be
/// combined; the new part then replaces the stored one.
pub fn combine(
    stored: (&HeaderMap, Part, &Bytes),
    new: (&HeaderMap, Part, &Bytes),
) -> Option<(StatusCode, HeaderMap, Option<Part>, Bytes)> {
    let ((old_headers, old, old_body), (new_headers, part, new_body)) = (stored, new);
    let strong = |headers: &HeaderMap| {
        headers
            .get(header::ETAG)
            .filter(|etag| !etag.as_bytes().starts_with(b"W/"))
            .cloned()
    };
    let same = strong(new_headers).is_some() && strong(new_headers) == strong(old_headers);
    if !same || old.complete != part.complete {
        return None;
    }
    let (old_end, new_end) = (
        old.start + old_body.len() as u64,
        part.start + new_body.len() as u64,
    );
    if part.start > old_end || old.start > new_end {
        return None;
    }
    let start = old.start.min(part.start);
    let end = old_end.max(new_end);
    let mut body = BytesMut::with_capacity((end - start) as usize);
    if old.start < part.start {
        body.extend_from_slice(&old_body[..(part.start - old.start) as usize]);
    }
    body.extend_from_slice(new_body);
    if old_end > new_end {
        body.extend_from_slice(&old_body[(new_end - old.start) as usize..]);
    }
    // Content-Length is the combined body's, set below.
    let mut headers = updated_fields(old_headers, new_headers);
    let whole = start == 0 && end == part.complete;
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    let combined = Part {
        start,
        complete: part.complete,
    };
    if whole {
        headers.remove(header::CONTENT_RANGE);
        return Some((StatusCode::OK, headers, None, body.freeze()));
    }
    headers.insert(
        header::CONTENT_RANGE,
        combined.content_range(0, (end - start) as usize),
    );
    Some((
        StatusCode::PARTIAL_CONTENT,
        headers,
        Some(combined),
        body.freeze(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn rfc9110_14_4_content_range_of_one_satisfied_range_with_a_known_length() {
        let part = |value: &str| Part::of(&headers(&[("content-range", value)]));
        let p = |start, complete| Part { start, complete };
        assert_eq!(part("bytes 4-9/10"), Some((p(4, 10), 6)));
        assert_eq!(part("bytes 0-0/1"), Some((p(0, 1), 1)));
        for refused in [
            "bytes 0-4/*",
            "bytes */10",
            "bytes 5-4/10",
            "bytes 0-10/10",
            "items 0-4/10",
            "bytes 0-4",
            "bytes -1-4/10",
        ] {
            assert_eq!(part(refused), None, "{refused}");
        }
        assert_eq!(Part::of(&HeaderMap::new()), None);
    }

    #[test]
    fn a_part_covers_the_ranges_inside_it() {
        let part = Part {
            start: 4,
            complete: 10,
        };
        assert_eq!(part.covers("bytes=6-8", 6), Some(2..5));
        assert_eq!(part.covers("bytes=6-", 6), Some(2..6));
        assert_eq!(part.covers("bytes=-1", 6), Some(5..6));
        assert_eq!(part.covers("bytes=3-5", 6), None);
        assert_eq!(part.covers("bytes=0-1,6-7", 6), None);
        assert_eq!(part.covers("bytes=10-", 6), None);
    }

    #[test]
    fn rfc9111_3_4_parts_of_one_representation_combine_and_the_new_fields_win() {
        let old = headers(&[("etag", "\"v1\""), ("a", "1"), ("b", "1")]);
        let new = headers(&[("etag", "\"v1\""), ("a", "2")]);
        let first = (
            Part {
                start: 0,
                complete: 10,
            },
            Bytes::from_static(b"01234"),
        );
        let rest = (
            Part {
                start: 5,
                complete: 10,
            },
            Bytes::from_static(b"56789"),
        );
        let (status, fields, part, body) =
            combine((&old, first.0, &first.1), (&new, rest.0, &rest.1)).expect("combined");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(part, None);
        assert_eq!(&body[..], b"0123456789");
        assert_eq!(fields["a"], "2", "the new response's field");
        assert_eq!(fields["b"], "1", "a field only the stored response has");
        assert_eq!(fields["content-length"], "10");
        assert!(!fields.contains_key("content-range"));
        // Overlapping parts that still leave a gap at the end stay a part.
        let middle = (
            Part {
                start: 3,
                complete: 10,
            },
            Bytes::from_static(b"3456"),
        );
        let (status, fields, part, body) =
            combine((&old, first.0, &first.1), (&new, middle.0, &middle.1)).expect("combined");
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(part, Some(first.0));
        assert_eq!(&body[..], b"0123456");
        assert_eq!(fields["content-range"], "bytes 0-6/10");
    }

    #[test]
    fn rfc9111_3_4_parts_without_the_same_strong_validator_do_not_combine() {
        let part = |start| Part {
            start,
            complete: 10,
        };
        let body = Bytes::from_static(b"01234");
        let v1 = headers(&[("etag", "\"v1\"")]);
        let (v2, weak, none) = (
            headers(&[("etag", "\"v2\"")]),
            headers(&[("etag", "W/\"v1\"")]),
            headers(&[]),
        );
        for other in [&v2, &weak, &none] {
            assert!(combine((&v1, part(0), &body), (other, part(5), &body)).is_none());
        }
        // The same weak validator, or none at all, says nothing about the bytes.
        for not_strong in [&weak, &none] {
            let stored = (not_strong, part(0), &body);
            assert!(combine(stored, (not_strong, part(5), &body)).is_none());
        }
        assert!(combine((&v1, part(0), &body), (&v1, part(5), &body)).is_some());
        // A gap between them: nothing to combine.
        assert!(combine(
            (&v1, part(0), &Bytes::from_static(b"01")),
            (&v1, part(5), &body)
        )
        .is_none());
    }
}
