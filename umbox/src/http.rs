//! Just enough HTTP/1.x to recognise logins in one TCP segment: the request line, headers,
//! Basic credentials, url-encoded login forms, and the status of a response.
//!
//! Only the segment that starts a request or a response is looked at; a request whose
//! headers span segments is seen through its first segment only.

/// A request line and what follows it, borrowed from the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The request target as sent, query string included.
    pub target: &'a str,
    head: &'a [u8],
    body: &'a [u8],
    /// Whether the blank line ending the headers is in this segment.
    complete: bool,
}

const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

/// Factory credentials tried by IoT botnets and left on lab devices (user, password).
pub const DEFAULT_CREDENTIALS: &[(&str, &str)] = &[
    ("admin", ""),
    ("admin", "admin"),
    ("admin", "password"),
    ("admin", "1234"),
    ("admin", "12345"),
    ("admin", "123456"),
    ("root", ""),
    ("root", "root"),
    ("root", "admin"),
    ("root", "12345"),
    ("root", "vizxv"),
    ("root", "xc3511"),
    ("user", "user"),
    ("guest", "guest"),
    ("support", "support"),
];

pub fn is_default(user: &str, pass: &str) -> bool {
    DEFAULT_CREDENTIALS
        .iter()
        .any(|&(u, p)| u.eq_ignore_ascii_case(user) && p == pass)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The request starting this segment, if it starts one.
pub fn request(payload: &[u8]) -> Option<Request<'_>> {
    let line_end = find(payload, b"\r\n")?;
    let line = std::str::from_utf8(&payload[..line_end]).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !METHODS.contains(&method) || !version.starts_with("HTTP/1.") {
        return None;
    }
    // The blank line may follow the request line directly: search from its CRLF.
    let (head, body, complete) = match find(&payload[line_end..], b"\r\n\r\n") {
        Some(i) => (
            &payload[(line_end + 2).min(line_end + i)..line_end + i],
            &payload[line_end + i + 4..],
            true,
        ),
        None => (&payload[line_end + 2..], &payload[payload.len()..], false),
    };
    Some(Request {
        method,
        target,
        head,
        body,
        complete,
    })
}

/// The status code of the response starting this segment, if it starts one.
pub fn response_status(payload: &[u8]) -> Option<u16> {
    let rest = payload.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

impl<'a> Request<'a> {
    /// The value of the first header called `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        let head = std::str::from_utf8(self.head).ok()?;
        head.split("\r\n").find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Whether the headers end within this segment (the blank line is in it).
    pub fn head_complete(&self) -> bool {
        self.complete
    }

    /// What follows the headers in this segment (empty unless they are complete).
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The path without the query string.
    pub fn path(&self) -> &'a str {
        self.target.split('?').next().unwrap_or(self.target)
    }

    /// `Authorization: Basic` credentials.
    pub fn basic_credentials(&self) -> Option<(String, String)> {
        let v = self.header("authorization")?;
        let (scheme, token) = v.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let raw = base64_decode(token.trim())?;
        let s = String::from_utf8(raw).ok()?;
        let (u, p) = s.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }

    /// User and password fields of a url-encoded login form, in the body of this segment
    /// or in the query string.
    pub fn form_credentials(&self) -> Option<(String, String)> {
        let query = self.target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let body = std::str::from_utf8(self.body).unwrap_or("");
        let mut user = None;
        let mut pass = None;
        for pair in query.split('&').chain(body.split('&')) {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let k = k.to_ascii_lowercase();
            let v = percent_decode(v);
            if user.is_none() && ["user", "username", "login", "usr", "name"].contains(&&*k) {
                user = Some(v);
            } else if pass.is_none() && ["pass", "password", "pwd", "passwd"].contains(&&*k) {
                pass = Some(v);
            }
        }
        Some((user?, pass?))
    }

    /// Whether this looks like a login: Basic credentials, a login form, or a POST to a
    /// path that names a login.
    pub fn is_login(&self) -> bool {
        if self.header("authorization").is_some() || self.form_credentials().is_some() {
            return true;
        }
        let p = self.path().to_ascii_lowercase();
        self.method == "POST" && (p.contains("login") || p.contains("auth"))
    }

    /// Credentials sent with this request, Basic first, then a form.
    pub fn credentials(&self) -> Option<(String, String)> {
        self.basic_credentials().or_else(|| self.form_credentials())
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Standard base64 (with or without padding); `None` on anything else.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn request_line_and_headers() {
        let r = request(b"GET /api/x/lights?a=1 HTTP/1.1\r\nHost: hue\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\n\r\n").unwrap();
        assert_eq!(
            (r.method, r.target, r.path()),
            ("GET", "/api/x/lights?a=1", "/api/x/lights")
        );
        assert_eq!(r.header("HOST"), Some("hue"));
        assert_eq!(
            r.basic_credentials(),
            Some(("admin".into(), "admin".into()))
        );
        assert!(r.is_login());
        assert!(request(b"HELLO / HTTP/1.1\r\n").is_none());
        assert!(request(b"GET / SPDY\r\n").is_none());
        assert!(request(b"GET / HTTP/1.1").is_none()); // no line end yet
        assert!(r.head_complete() && r.body().is_empty());
        let cut = request(b"GET / HTTP/1.1\r\nHost: hue\r\n").unwrap();
        assert!(!cut.head_complete());
        assert_eq!(cut.header("host"), Some("hue"));
        let bare = request(b"GET / HTTP/1.0\r\n\r\nrest").unwrap();
        assert!(bare.head_complete() && bare.body() == b"rest");
        assert!(request(b"\x16\x03\x01binary").is_none());
    }

    #[test]
    fn login_forms() {
        let r = request(
            b"POST /login.cgi HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\nuser=admin&password=p%40ss+1",
        )
        .unwrap();
        assert_eq!(
            r.form_credentials(),
            Some(("admin".into(), "p@ss 1".into()))
        );
        assert!(r.is_login());
        let q = request(b"GET /cgi?username=root&pwd= HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(q.credentials(), Some(("root".into(), String::new())));
        let plain = request(b"GET /index.html HTTP/1.1\r\n\r\n").unwrap();
        assert!(!plain.is_login());
        let post = request(b"POST /auth HTTP/1.1\r\n\r\n").unwrap();
        assert!(post.is_login());
    }

    #[test]
    fn response_codes() {
        assert_eq!(response_status(b"HTTP/1.1 401 Unauthorized\r\n"), Some(401));
        assert_eq!(response_status(b"HTTP/1.0 200 OK"), Some(200));
        assert_eq!(response_status(b"HTTP/1.1 2x0"), None);
        assert_eq!(response_status(b"GET / HTTP/1.1"), None);
        assert_eq!(response_status(b"HTTP/1."), None);
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("YWRtaW46YWRtaW4=").unwrap(), b"admin:admin");
        assert_eq!(base64_decode("cm9vdDo=").unwrap(), b"root:");
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("!!!!").is_none());
    }

    #[test]
    fn defaults() {
        assert!(is_default("Admin", "admin"));
        assert!(is_default("root", ""));
        assert!(!is_default("admin", "S3cure!"));
    }

    #[test]
    fn percent_edge_cases() {
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("a%4"), "a%4");
        assert_eq!(percent_decode("%41%zz"), "A%zz");
    }
}
