//! Cache directives as a response states them: `Cache-Control` (RFC 9111 §5.2), or a
//! targeted field such as `CDN-Cache-Control` (RFC 9213), which has the same directives in
//! Structured Fields dictionary syntax (RFC 8941 §3.2).

use http::header::GetAll;
use http::HeaderValue;

/// The directives of one field: lower-cased names, each with its value if it had one.
#[derive(Debug, Clone, Default)]
pub struct CacheControl {
    directives: Vec<(String, Option<String>)>,
}

impl CacheControl {
    /// `Cache-Control`, all its lines as one list. A value in quotes is kept with its quotes,
    /// so that a quoted `max-age="60"` is not taken for a number (§5.2: delta-seconds are
    /// never quoted).
    pub fn parse(values: GetAll<'_, HeaderValue>) -> CacheControl {
        let mut directives = Vec::new();
        for value in values.iter().filter_map(|v| v.to_str().ok()) {
            for item in split_list(value) {
                let (name, value) = match item.split_once('=') {
                    Some((name, value)) => (name, Some(value.trim().to_owned())),
                    None => (item, None),
                };
                let name = name.trim().to_ascii_lowercase();
                if !name.is_empty() {
                    directives.push((name, value));
                }
            }
        }
        CacheControl { directives }
    }

    /// A targeted field (RFC 9213 §2.1): a dictionary whose members are cache directives,
    /// `None` if it is empty or not a valid dictionary, which makes the cache fall back to
    /// `Cache-Control`. Members may carry parameters (ignored) and a boolean `?1`/`?0`.
    pub fn parse_targeted(values: GetAll<'_, HeaderValue>) -> Option<CacheControl> {
        let mut directives = Vec::new();
        for value in values.iter() {
            let value = value.to_str().ok()?;
            for item in split_list(value) {
                let item = item.trim();
                let member = item.split(';').next().unwrap_or("").trim();
                let (name, value) = match member.split_once('=') {
                    Some((name, value)) => (name.trim(), Some(value.trim())),
                    None => (member, None),
                };
                if !is_sf_key(name) {
                    return None;
                }
                match value {
                    None | Some("?1") => directives.push((name.to_owned(), None)),
                    Some("?0") => {}
                    Some(value) if is_sf_item(value) => {
                        directives.push((name.to_owned(), Some(value.to_owned())))
                    }
                    Some(_) => return None,
                }
            }
        }
        (!directives.is_empty()).then_some(CacheControl { directives })
    }

    pub fn has(&self, name: &str) -> bool {
        self.directives.iter().any(|(n, _)| n == name)
    }

    /// The first `name` directive's value as delta-seconds; `None` when it is absent or its
    /// value is not plain digits (quoted, signed, fractional, empty).
    pub fn seconds(&self, name: &str) -> Option<u64> {
        self.directives
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(delta_seconds)
    }
}

/// `delta-seconds` (§1.2.2): digits only; too many of them is the largest value.
pub(super) fn delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse().unwrap_or(u64::from(u32::MAX)))
}

/// Splits a comma-separated list, leaving commas inside quoted strings alone.
fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut items = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&value[start..]);
    items.into_iter().map(str::trim).filter(|i| !i.is_empty())
}

/// An sf-key (RFC 8941 §3.1.2): lower-case letter or `*`, then lower-case letters, digits,
/// `_`, `-`, `.`, `*`.
fn is_sf_key(key: &str) -> bool {
    let mut bytes = key.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'*'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*'))
}

/// A bare item this cache understands in a targeted field: an integer, a token or a string.
fn is_sf_item(value: &str) -> bool {
    let integer = value
        .strip_prefix('-')
        .unwrap_or(value)
        .bytes()
        .all(|b| b.is_ascii_digit())
        && !value.is_empty()
        && value.len() <= 16;
    let token = value
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'*');
    let string = value.len() >= 2 && value.starts_with('"') && value.ends_with('"');
    integer || token || string
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn field(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x", HeaderValue::from_static(v));
        }
        headers
    }

    #[test]
    fn rfc9111_5_2_delta_seconds_are_digits_only_and_never_quoted() {
        let h = field(&[
            "max-age=\"60\", s-maxage=30, stale-if-error=-1",
            "MAX-AGE=5",
        ]);
        let cc = CacheControl::parse(h.get_all("x"));
        assert_eq!(cc.seconds("max-age"), None, "the quoted one comes first");
        assert_eq!(cc.seconds("s-maxage"), Some(30));
        assert_eq!(cc.seconds("stale-if-error"), None);
        assert!(cc.has("max-age"));
        let h = field(&["max-age=99999999999999999999"]);
        assert_eq!(
            CacheControl::parse(h.get_all("x")).seconds("max-age"),
            Some(u64::from(u32::MAX))
        );
    }

    #[test]
    fn commas_inside_quoted_values_do_not_split_directives() {
        let h = field(&["no-cache=\"set-cookie, x-a\", max-age=10"]);
        let cc = CacheControl::parse(h.get_all("x"));
        assert!(cc.has("no-cache"));
        assert_eq!(cc.seconds("max-age"), Some(10));
        assert!(!cc.has("x-a\""));
    }

    #[test]
    fn rfc9213_2_1_targeted_fields_are_dictionaries_and_invalid_ones_are_ignored() {
        let h = field(&["max-age=60, stale-while-revalidate=5;x=1, must-revalidate"]);
        let cc = CacheControl::parse_targeted(h.get_all("x")).expect("valid");
        assert_eq!(cc.seconds("max-age"), Some(60));
        assert_eq!(cc.seconds("stale-while-revalidate"), Some(5));
        assert!(cc.has("must-revalidate"));
        let off = field(&["no-store=?0, max-age=1"]);
        assert!(!CacheControl::parse_targeted(off.get_all("x"))
            .expect("valid")
            .has("no-store"));
        for invalid in ["Max-Age=60", "max-age=60 junk", "max-age=(1 2)", ""] {
            let h = field(&[invalid]);
            assert!(
                CacheControl::parse_targeted(h.get_all("x")).is_none(),
                "{invalid:?}"
            );
        }
    }
}
