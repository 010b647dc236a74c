//! `Vary` (RFC 9111 §4.1): a request field's value as a cache compares it, and whether a
//! follower's values match its leader's.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName};

/// Whether a follower whose request has `ours` may take a response made for `leaders`, given
/// the response's `Vary` names.
pub fn vary_matches(vary: &[HeaderName], ours: &HeaderMap, leaders: &HeaderMap) -> bool {
    vary.iter()
        .all(|name| vary_value(ours, name) == vary_value(leaders, name))
}

/// Fields whose values compare without regard to case (RFC 9110 §12.5.3-§12.5.4, and the
/// charset tokens): the request fields responses most often vary on.
static CASE_INSENSITIVE: [HeaderName; 3] = [
    header::ACCEPT_ENCODING,
    header::ACCEPT_LANGUAGE,
    header::ACCEPT_CHARSET,
];

/// A request field's value as `Vary` compares it (RFC 9111 §4.1, which lets a cache normalise
/// what the field's syntax allows): all its lines as one list, members trimmed and joined by
/// ", ", lower-cased for the fields above. Borrowed when the value is already so, which is how
/// clients usually send it. `None` when the request has no such field.
pub fn vary_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<Cow<'a, str>> {
    let mut values = headers.get_all(name).iter().peekable();
    let first = *values.peek()?;
    let case_insensitive = CASE_INSENSITIVE.contains(name);
    let lines = headers.get_all(name).iter().count();
    if let (1, Ok(text)) = (lines, first.to_str()) {
        if is_normal(text, case_insensitive) {
            return Some(Cow::Borrowed(text));
        }
    }
    let mut normal = String::new();
    // Values that are not visible ASCII compare as they are.
    for member in values
        .flat_map(|v| {
            v.to_str()
                .unwrap_or_else(|_| std::str::from_utf8(v.as_bytes()).unwrap_or("\u{fffd}"))
                .split(',')
        })
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        if !normal.is_empty() {
            normal.push_str(", ");
        }
        normal.push_str(member);
    }
    if case_insensitive {
        normal.make_ascii_lowercase();
    }
    Some(Cow::Owned(normal))
}

/// Whether `text` is already what [`vary_value`] would make of it.
fn is_normal(text: &str, case_insensitive: bool) -> bool {
    let needs_lowering = case_insensitive && text.bytes().any(|b| b.is_ascii_uppercase());
    !text.is_empty()
        && !needs_lowering
        && text
            .split(", ")
            .all(|member| !member.is_empty() && !member.contains(',') && member.trim() == member)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn rfc9111_4_1_vary_values_normalise_and_are_borrowed_when_already_normal() {
        let name = header::ACCEPT_ENCODING;
        let value =
            |pairs: &[(&str, &str)]| vary_value(&headers(pairs), &name).map(Cow::into_owned);
        let usual = headers(&[("accept-encoding", "gzip, br")]);
        assert!(matches!(
            vary_value(&usual, &name),
            Some(Cow::Borrowed("gzip, br"))
        ));
        for same in [
            &[("accept-encoding", "gzip,br")][..],
            &[("accept-encoding", " GZIP ,  br ")],
            &[("accept-encoding", "gzip"), ("accept-encoding", "br")],
            &[("accept-encoding", "gzip,, br")],
        ] {
            assert_eq!(value(same).as_deref(), Some("gzip, br"), "{same:?}");
        }
        assert_eq!(value(&[]), None);
        // Case matters for fields not known to be case-insensitive.
        let other = HeaderName::from_static("x-variant");
        assert_eq!(
            vary_value(&headers(&[("x-variant", "A,b")]), &other).as_deref(),
            Some("A, b")
        );
    }

    #[test]
    fn vary_compares_every_named_header() {
        let vary = vec![header::ACCEPT_LANGUAGE];
        let en = headers(&[("accept-language", "en")]);
        let fr = headers(&[("accept-language", "fr")]);
        assert!(vary_matches(&vary, &en, &en.clone()));
        assert!(!vary_matches(&vary, &en, &fr));
        assert!(!vary_matches(&vary, &en, &HeaderMap::new()));
        assert!(vary_matches(&[], &en, &fr));
    }
}
