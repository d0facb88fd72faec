//! Checks shared by the fuzz targets.

/// True when every CR is followed by LF and every LF preceded by CR.
pub fn only_crlf_line_endings(body: &[u8]) -> bool {
    body.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => body.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && body[i - 1] == b'\r',
        _ => true,
    })
}
