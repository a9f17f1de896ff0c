//! Plain HTTP on the WebSocket port: static files from one directory (GET and HEAD),
//! so a browser page and its socket share an origin. Paths that would leave the
//! directory (`..`, encoded or not, and symlinks pointing out) are refused, and
//! dotfiles (`.env`, `.git/`) are not found. At most [`MAX_FILES_IN_FLIGHT`] files
//! are sent at once (503 past it), so that slow readers of large files cannot hold
//! every file descriptor.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Files being sent at once, at most.
pub const MAX_FILES_IN_FLIGHT: usize = 256;

/// A directory served over HTTP.
#[derive(Clone, Debug)]
pub struct StaticFiles {
    /// Canonical path of the directory.
    root: PathBuf,
    /// One permit per file being sent.
    in_flight: Arc<Semaphore>,
}

/// What to send for a request: the response head (a whole response, for an error), and
/// the file to stream after it.
pub struct Response {
    /// Status line and headers, ending with the blank line.
    pub head: Vec<u8>,
    /// The body: a file (GET of a file) or a short text (errors); none for HEAD.
    pub body: Body,
    /// The place among the files in flight, held until the response is dropped.
    _permit: Option<OwnedSemaphorePermit>,
}

/// What follows the head.
pub enum Body {
    /// Nothing (HEAD, or an error, whose head carries its text).
    Empty,
    /// A file, of the length announced in the head.
    File(tokio::fs::File),
}

impl StaticFiles {
    /// Serves `dir`, which must exist.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        Ok(Self {
            root: dir.canonicalize()?,
            in_flight: Arc::new(Semaphore::new(MAX_FILES_IN_FLIGHT)),
        })
    }

    /// Answers a plain HTTP request for `path` (already split from its query).
    pub async fn respond(&self, method: &str, path: &str) -> Response {
        if method != "GET" && method != "HEAD" {
            return error(405, &[("Allow", "GET, HEAD")]);
        }
        let file = match resolve(&self.root, path) {
            Ok(file) => file,
            Err(Refusal::BadRequest) => return error(400, &[]),
            Err(Refusal::Forbidden) => return error(403, &[]),
            Err(Refusal::NotFound) => return error(404, &[]),
        };
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            return error(503, &[("Retry-After", "1")]);
        };
        let Ok(handle) = tokio::fs::File::open(&file).await else {
            return error(404, &[]);
        };
        let Ok(metadata) = handle.metadata().await else {
            return error(404, &[]);
        };
        let headers = [("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-cache")];
        let head = crate::http::head(200, &headers, Some(content_type(&file)), metadata.len());
        let body = if method == "HEAD" {
            Body::Empty
        } else {
            Body::File(handle)
        };
        Response {
            head,
            body,
            _permit: Some(permit),
        }
    }
}

/// An error answer, whole: its phrase as the body.
fn error(status: u16, headers: &[(&str, &str)]) -> Response {
    Response {
        head: crate::http::text(status, headers, crate::http::phrase(status)),
        body: Body::Empty,
        _permit: None,
    }
}

/// Why a path is not served.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    BadRequest,
    Forbidden,
    NotFound,
}

/// Maps a URL path to a file under `root` (canonical), with `index.html` for directories.
fn resolve(root: &Path, url_path: &str) -> Result<PathBuf, Refusal> {
    let decoded = percent_decode_str(url_path)
        .decode_utf8()
        .map_err(|_| Refusal::BadRequest)?;
    if decoded.contains('\0') || decoded.contains('\\') {
        return Err(Refusal::BadRequest);
    }
    let mut candidate = root.to_path_buf();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Err(Refusal::Forbidden),
            name if name.starts_with('.') => return Err(Refusal::NotFound),
            name => candidate.push(name),
        }
    }
    // Canonicalising follows symlinks: what it yields must still be inside the root,
    // and no dotfile either.
    let inside = |file: &Path| match file.strip_prefix(root) {
        Ok(below) if below.iter().any(|part| part.as_encoded_bytes().starts_with(b".")) => Err(Refusal::NotFound),
        Ok(_) => Ok(()),
        Err(_) => Err(Refusal::Forbidden),
    };
    let mut file = candidate.canonicalize().map_err(|_| Refusal::NotFound)?;
    inside(&file)?;
    if file.is_dir() {
        file = file.join("index.html").canonicalize().map_err(|_| Refusal::NotFound)?;
        inside(&file)?;
    }
    if file.is_file() {
        Ok(file)
    } else {
        Err(Refusal::NotFound)
    }
}

/// The `Content-Type` for a file, by extension.
fn content_type(file: &Path) -> &'static str {
    let extension = file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match extension.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "ico" => "image/x-icon",
        "webp" => "image/webp",
        "woff2" => "font/woff2",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (PathBuf, PathBuf) {
        let base = std::env::temp_dir().join(format!(
            "wsplug-static-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("site");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("index.html"), "<h1>hi</h1>").unwrap();
        std::fs::write(root.join("sub/app.js"), "1").unwrap();
        std::fs::write(base.join("secret.txt"), "secret").unwrap();
        std::os::unix::fs::symlink(base.join("secret.txt"), root.join("link.txt")).unwrap();
        std::fs::write(root.join(".env"), "TOKEN=secret").unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join(".git/config"), "secret").unwrap();
        std::os::unix::fs::symlink(root.join(".env"), root.join("env.txt")).unwrap();
        (base, root.canonicalize().unwrap())
    }

    #[test]
    fn serves_files_and_directory_indexes() {
        let (base, root) = fixture();
        assert_eq!(resolve(&root, "/"), Ok(root.join("index.html")));
        assert_eq!(resolve(&root, "/sub/app.js"), Ok(root.join("sub/app.js")));
        assert_eq!(resolve(&root, "/sub%2Fapp.js"), Ok(root.join("sub/app.js")));
        assert_eq!(resolve(&root, "/./sub//app.js"), Ok(root.join("sub/app.js")));
        assert_eq!(resolve(&root, "/sub/"), Err(Refusal::NotFound));
        assert_eq!(resolve(&root, "/missing"), Err(Refusal::NotFound));
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn refuses_paths_that_leave_the_root() {
        let (base, root) = fixture();
        for path in [
            "/../secret.txt",
            "/sub/../../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2E%2Fsecret.txt",
            "/..%2fsecret.txt",
        ] {
            assert_eq!(resolve(&root, path), Err(Refusal::Forbidden), "{path}");
        }
        assert_eq!(resolve(&root, "/link.txt"), Err(Refusal::Forbidden));
        assert_eq!(resolve(&root, "/a%00b"), Err(Refusal::BadRequest));
        assert_eq!(resolve(&root, "/a%5c..%5csecret.txt"), Err(Refusal::BadRequest));
        assert_eq!(resolve(&root, "/%ff"), Err(Refusal::BadRequest));
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn dotfiles_are_not_found() {
        let (base, root) = fixture();
        for path in ["/.env", "/%2eenv", "/.git/config", "/.git/", "/sub/../.env", "/env.txt"] {
            let expected = if path.contains("..") {
                Refusal::Forbidden
            } else {
                Refusal::NotFound
            };
            assert_eq!(resolve(&root, path), Err(expected), "{path}");
        }
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn knows_common_content_types() {
        assert_eq!(content_type(Path::new("a/index.HTML")), "text/html; charset=utf-8");
        assert_eq!(content_type(Path::new("chat.js")), "text/javascript; charset=utf-8");
        assert_eq!(content_type(Path::new("x")), "application/octet-stream");
    }
}
