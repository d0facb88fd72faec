//! What a TLS session is recorded as, on both sides (the ingress's Received header and the
//! relay's delivery events).

use mailflow_proto::v1::TlsInfo;

/// The negotiated protocol version (`TLSv1.3`) and cipher suite of a session.
pub fn session_info(state: &rustls::CommonState) -> TlsInfo {
    let version = match state.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let cipher = state
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    TlsInfo { version, cipher }
}
