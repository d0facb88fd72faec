//! The HTTP/1.1 exchange that fetches a policy (RFC 8461 §3.3): one `GET` with
//! `Connection: close`, and the response read whole (the caller bounds its size). Redirects
//! are not followed (§3.3), so only a `200` carries a policy.

/// Where the policy lives on the `mta-sts.<domain>` host.
pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// The request for the policy of `domain`.
pub fn request(domain: &str) -> String {
    format!(
        "GET {POLICY_PATH} HTTP/1.1\r\nHost: mta-sts.{domain}\r\nUser-Agent: mailflow\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The media type, lower case, without parameters (`text/plain`).
    pub media_type: String,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// Why a response cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// It ended before its header or its declared body did.
    #[error("HTTP response truncated")]
    Truncated,
    /// It is not HTTP/1.x as expected.
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
}

/// Parses a whole response (everything the server sent before closing).
pub fn parse_response(data: &[u8]) -> Result<Response, HttpError> {
    let end = memchr::memmem::find(data, b"\r\n\r\n").ok_or(HttpError::Truncated)?;
    let head = std::str::from_utf8(&data[..end])
        .map_err(|_| HttpError::Malformed("header is not text"))?;
    let rest = &data[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("not HTTP/1.x"));
    }
    let status = parts
        .next()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(HttpError::Malformed("bad status code"))?;
    let (mut length, mut chunked, mut media_type) = (None, false, String::new());
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or(HttpError::Malformed("header line without a colon"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| HttpError::Malformed("bad Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .to_ascii_lowercase()
                .split(',')
                .any(|v| v.trim() == "chunked");
        } else if name.eq_ignore_ascii_case("content-type") {
            media_type = value
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(length) = length {
        rest.get(..length).ok_or(HttpError::Truncated)?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        media_type,
        body,
    })
}

/// Decodes a chunked body (RFC 9112 §7.1); trailers are ignored.
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let line_end = memchr::memmem::find(data, b"\r\n").ok_or(HttpError::Truncated)?;
        let size_text = std::str::from_utf8(&data[..line_end])
            .map_err(|_| HttpError::Malformed("chunk size is not text"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Malformed("bad chunk size"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = data.get(..size).ok_or(HttpError::Truncated)?;
        body.extend_from_slice(chunk);
        data = data
            .get(size..)
            .and_then(|d| d.strip_prefix(b"\r\n"))
            .ok_or(HttpError::Truncated)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_the_policy_host() {
        let r = request("example.com");
        assert!(
            r.starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.example.com\r\n")
        );
        assert!(r.ends_with("Connection: close\r\n\r\n"));
    }

    #[test]
    fn plain_length_and_close_delimited_bodies() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n\r\nhelloEXTRA").unwrap();
        assert_eq!(
            (r.status, r.media_type.as_str(), r.body.as_slice()),
            (200, "text/plain", b"hello".as_slice())
        );
        let r = parse_response(b"HTTP/1.0 404 Not Found\r\n\r\nmissing").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, b"missing".as_slice()));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"),
            Err(HttpError::Truncated)
        );
    }

    #[test]
    fn chunked_bodies_are_joined() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nvers\r\n3;x=y\r\nion\r\n0\r\nTrailer: 1\r\n\r\n").unwrap();
        assert_eq!(r.body, b"version");
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc"),
            Err(HttpError::Truncated)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Err(HttpError::Malformed("bad chunk size"))
        );
    }

    #[test]
    fn malformed_responses() {
        assert_eq!(
            parse_response(b"SMTP/1.0 200\r\n\r\n"),
            Err(HttpError::Malformed("not HTTP/1.x"))
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 2000 OK\r\n\r\n"),
            Err(HttpError::Malformed("bad status code"))
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n"),
            Err(HttpError::Malformed("header line without a colon"))
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err(HttpError::Malformed("bad Content-Length"))
        );
        assert_eq!(parse_response(b"HTTP/1.1 200"), Err(HttpError::Truncated));
    }
}
