//! The paths a route serves, and how a request's path picks its route.

/// A route's path that is not `/exact/path`, `/prefix/*` or `/*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected /exact/path, /prefix/* or /* (no query, no %, * only at the end)")]
pub struct InvalidPath;

/// The paths a route serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePath {
    /// As written: `/chat`, `/chat/*` or `/*`.
    text: String,
}

impl RoutePath {
    /// Checks a route's `path`.
    pub fn parse(text: &str) -> Result<RoutePath, InvalidPath> {
        let body = text.strip_suffix("/*").unwrap_or(text);
        let valid = text.starts_with('/')
            && !body.contains('*')
            && body.bytes().all(|b| b.is_ascii_graphic() && !b"?#%\\".contains(&b));
        if !valid {
            return Err(InvalidPath);
        }
        Ok(RoutePath { text: text.to_owned() })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// How well it matches a request's path: `None` if it does not, else a rank that
    /// prefers an exact path to any prefix, and a longer prefix to a shorter one.
    pub fn rank(&self, path: &str) -> Option<usize> {
        match self.text.strip_suffix("/*") {
            None => (path == self.text).then_some(usize::MAX),
            Some(prefix) => {
                let below = path.strip_prefix(prefix)?;
                (below.is_empty() || below.starts_with('/')).then_some(prefix.len())
            }
        }
    }

    /// The name a route gets when it is not given one: its path without the slashes at
    /// either end and the `*`, inner slashes as dots (`/api/v1/*` is `api.v1`); none for `/*`.
    pub fn default_name(&self) -> Option<String> {
        let text = self.text.trim_end_matches('*').trim_matches('/');
        let name = text.replace('/', ".");
        (!name.is_empty()).then_some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::RoutePath;

    #[test]
    fn a_request_goes_to_the_exact_path_then_the_longest_prefix() {
        let rank = |pattern: &str, path: &str| RoutePath::parse(pattern).unwrap().rank(path);
        assert_eq!(rank("/chat", "/chat"), Some(usize::MAX));
        assert_eq!(rank("/chat", "/chat/x"), None);
        assert_eq!(rank("/chat/*", "/chat"), Some(5));
        assert_eq!(rank("/chat/*", "/chat/room/1"), Some(5));
        assert_eq!(rank("/chat/*", "/chatroom"), None);
        assert_eq!(rank("/*", "/anything"), Some(0));
        assert!(rank("/a/b/*", "/a/b/c") > rank("/a/*", "/a/b/c"));
    }
}
