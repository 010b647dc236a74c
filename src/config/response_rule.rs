//! The syntax of a `not_shareable` rule: a header's presence (`"set-cookie"`) or a token in a
//! header's comma-separated list (`"cache-control: private"`). How a rule matches a response
//! is the sharing rules' business (`sharing`).

use std::fmt;
use std::str::FromStr;

use http::header::HeaderName;

/// A response rule from `not_shareable`: either a header's presence (`"set-cookie"`) or a
/// token in a header's comma-separated list (`"cache-control: private"`, `"vary: *"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseRule {
    Present(HeaderName),
    HasToken(HeaderName, String),
}

impl FromStr for ResponseRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let name = |n: &str| {
            HeaderName::from_bytes(n.trim().as_bytes())
                .map_err(|_| format!("invalid header name {:?} in rule {text:?}", n.trim()))
        };
        match text.split_once(':') {
            None => Ok(ResponseRule::Present(name(text)?)),
            Some((header, token)) => {
                let token = token.trim().to_ascii_lowercase();
                if token.is_empty() || token.contains(',') {
                    return Err(format!(
                        "rule {text:?} needs one token after the colon, e.g. \"cache-control: private\""
                    ));
                }
                Ok(ResponseRule::HasToken(name(header)?, token))
            }
        }
    }
}

impl fmt::Display for ResponseRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseRule::Present(name) => write!(f, "{name}"),
            ResponseRule::HasToken(name, token) => write!(f, "{name}: {token}"),
        }
    }
}

/// The default `not_shareable` list.
pub fn default_rules() -> Vec<ResponseRule> {
    [
        "set-cookie",
        "cache-control: private",
        "cache-control: no-store",
        "vary: *",
    ]
    .iter()
    .map(|rule| rule.parse().expect("built-in rules are valid"))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn rules_parse_and_reject_nonsense() {
        assert_eq!(
            "Cache-Control: No-Cache".parse::<ResponseRule>(),
            Ok(ResponseRule::HasToken(
                header::CACHE_CONTROL,
                "no-cache".into()
            ))
        );
        assert!("bad header: x".parse::<ResponseRule>().is_err());
        assert!("cache-control:".parse::<ResponseRule>().is_err());
        assert!("cache-control: a, b".parse::<ResponseRule>().is_err());
    }

    #[test]
    fn rules_print_as_written_in_the_config() {
        // The matched rule is what the debug log names when it releases followers.
        for rule in ["set-cookie", "cache-control: private", "vary: *"] {
            assert_eq!(rule.parse::<ResponseRule>().unwrap().to_string(), rule);
        }
        assert_eq!(default_rules().len(), 4);
    }
}
