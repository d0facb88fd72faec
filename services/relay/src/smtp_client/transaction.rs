//! One transaction on a ready connection: MAIL, RCPT and DATA (pipelined when the server
//! offers PIPELINING), then the body. Over LMTP (RFC 2033 §4.2) each accepted recipient
//! gets its own reply to the end of data.

use mailflow_smtp::{ServerReply, dot, xtext};

use super::conn::{Conn, Ready};
use super::{Envelope, HostFailure, Stage};

/// One transaction from MAIL FROM to the reply to the end of data, leaving the connection
/// ready for the next one.
pub(super) async fn transaction(
    ready: &mut Ready,
    env: &Envelope<'_>,
) -> Result<Vec<ServerReply>, HostFailure> {
    if env.smtputf8 && !ready.has("SMTPUTF8") {
        return Err(HostFailure::NoSmtpUtf8 {
            addr: ready.conn.addr,
        });
    }
    let mut mail = format!("MAIL FROM:<{}>", env.from);
    if ready.has("SIZE") {
        mail.push_str(&format!(" SIZE={}", env.body.len()));
    }
    // 8-bit content is never sent to a peer without 8BITMIME (RFC 6152 §3): this relay does
    // not downgrade to 7 bit, it returns the message (5.6.3). Peers without 8BITMIME are
    // rare today; 7-bit content goes anywhere.
    if !ready.has("8BITMIME") && !env.body.is_ascii() {
        return Err(HostFailure::No8BitMime {
            addr: ready.conn.addr,
        });
    }
    if env.eight_bit && ready.has("8BITMIME") {
        mail.push_str(" BODY=8BITMIME");
    }
    if env.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    if env.requiretls {
        if !ready.has("REQUIRETLS") {
            return Err(HostFailure::NoRequireTls {
                addr: ready.conn.addr,
            });
        }
        mail.push_str(" REQUIRETLS");
    }
    // The DSN requests go along to a next hop that takes them (RFC 3461 §5.2.2).
    let dsn = ready.has("DSN");
    if dsn {
        if let Some(ret) = env.ret {
            mail.push_str(&format!(" RET={ret}"));
        }
        if !env.envid.is_empty() {
            mail.push_str(&format!(" ENVID={}", xtext::encode(env.envid)));
        }
    }
    let rcpts: Vec<String> = env
        .rcpts
        .iter()
        .map(|r| {
            let mut line = format!("RCPT TO:<{}>", r.address);
            if dsn {
                if let Some(notify) = r.notify {
                    line.push_str(&format!(" NOTIFY={notify}"));
                }
                line.push_str(&orcpt_param(r.orcpt));
            }
            line
        })
        .collect();
    let pipelining = ready.has("PIPELINING");
    let conn = &mut ready.conn;
    let (mail_reply, replies, data) = if pipelining {
        pipelined_envelope(conn, &mail, &rcpts).await?
    } else {
        stepwise_envelope(conn, &mail, &rcpts).await?
    };
    let data_accepted = data.as_ref().is_some_and(|d| d.code == 354);
    let any_rcpt = replies.iter().any(ServerReply::is_success);
    if data_accepted && !(mail_reply.is_success() && any_rcpt) {
        // A server that said 354 although nothing was accepted (RFC 2920 §3.1): end the
        // empty message; it has no recipients, so nothing is delivered.
        conn.send(b".\r\n", Stage::EmptyMessage).await?;
        conn.read_reply(Stage::EmptyMessage).await?;
    }
    if !mail_reply.is_success() {
        return Err(conn.refused(mail_reply));
    }
    if !any_rcpt {
        let reset = conn.command("RSET", Stage::Reset).await?;
        if !reset.is_success() {
            return Err(conn.refused(reset));
        }
        return Ok(replies);
    }
    match data {
        Some(data) if data.code == 354 => {}
        Some(refusal) => {
            return Ok(replies
                .into_iter()
                .map(|r| if r.is_success() { refusal.clone() } else { r })
                .collect());
        }
        None => unreachable!("both exchanges send DATA once MAIL and a recipient are accepted"),
    }
    send_body(conn, env.body).await?;
    if ready.lmtp {
        let mut out = Vec::with_capacity(replies.len());
        for r in replies {
            out.push(if r.is_success() {
                conn.read_reply(Stage::RecipientEndOfData).await?
            } else {
                r
            });
        }
        return Ok(out);
    }
    let fin = conn.read_reply(Stage::EndOfData).await?;
    Ok(replies
        .into_iter()
        .map(|r| if r.is_success() { fin.clone() } else { r })
        .collect())
}

/// Octets of a body encoded and sent at a time: a delivery holds the body and at most
/// one encoded piece (about this much), not a second copy of the whole body.
pub(crate) const BODY_PIECE: usize = 64 * 1024;

/// Sends a body after `354`, encoded a piece at a time, and the end of data with the last.
async fn send_body(conn: &mut Conn, body: &[u8]) -> Result<(), HostFailure> {
    let mut wire = Vec::with_capacity(BODY_PIECE + BODY_PIECE / 64 + 8);
    let mut pieces = dot::pieces(body, BODY_PIECE).peekable();
    while let Some(piece) = pieces.next() {
        wire.clear();
        dot::encode_piece(piece, &mut wire);
        if pieces.peek().is_none() {
            dot::end(body, &mut wire);
        }
        conn.send(&wire, Stage::Body).await?;
    }
    Ok(())
}

/// ` ORCPT=type;xtext` for an ORCPT value as given (`rfc822;addr`), or nothing when there
/// is none or its address is not ASCII (a UTF-8 address needs RFC 6533's own encoding,
/// which a next hop may not read; the notices then name the final address).
fn orcpt_param(orcpt: &str) -> String {
    match orcpt.split_once(';') {
        Some((kind, address)) if !kind.is_empty() && !address.is_empty() && orcpt.is_ascii() => {
            format!(" ORCPT={kind};{}", xtext::encode(address))
        }
        _ => String::new(),
    }
}

/// The replies to MAIL, each RCPT and DATA (`None` when DATA was not sent).
type EnvelopeReplies = (ServerReply, Vec<ServerReply>, Option<ServerReply>);

/// MAIL, RCPT and DATA in one write, then their replies in order (RFC 2920): one round trip
/// instead of two or more per recipient.
async fn pipelined_envelope(
    conn: &mut Conn,
    mail: &str,
    rcpts: &[String],
) -> Result<EnvelopeReplies, HostFailure> {
    let mut batch = String::with_capacity(mail.len() + 8 + rcpts.len() * 64);
    for line in std::iter::once(mail)
        .chain(rcpts.iter().map(String::as_str))
        .chain(["DATA"])
    {
        batch.push_str(line);
        batch.push_str("\r\n");
    }
    conn.send(batch.as_bytes(), Stage::MailFrom).await?;
    let mail_reply = conn.read_reply(Stage::MailFrom).await?;
    let mut replies = Vec::with_capacity(rcpts.len());
    for _ in rcpts {
        replies.push(conn.read_reply(Stage::RcptTo).await?);
    }
    let data = conn.read_reply(Stage::Data).await?;
    Ok((mail_reply, replies, Some(data)))
}

/// MAIL, RCPT and DATA one at a time, for a server without PIPELINING: stops after a refused
/// MAIL, and sends DATA only when a recipient was accepted.
async fn stepwise_envelope(
    conn: &mut Conn,
    mail: &str,
    rcpts: &[String],
) -> Result<EnvelopeReplies, HostFailure> {
    let mail_reply = conn.command(mail, Stage::MailFrom).await?;
    if !mail_reply.is_success() {
        return Ok((mail_reply, Vec::new(), None));
    }
    let mut replies = Vec::with_capacity(rcpts.len());
    for rcpt in rcpts {
        replies.push(conn.command(rcpt, Stage::RcptTo).await?);
    }
    if !replies.iter().any(ServerReply::is_success) {
        return Ok((mail_reply, replies, None));
    }
    let data = conn.command("DATA", Stage::Data).await?;
    Ok((mail_reply, replies, Some(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orcpt_is_written_as_xtext_and_only_when_it_can_be() {
        assert_eq!(
            orcpt_param("rfc822;a+b=c@x.test"),
            " ORCPT=rfc822;a+2Bb+3Dc@x.test"
        );
        assert_eq!(orcpt_param(""), "");
        assert_eq!(orcpt_param("rfc822;"), "");
        assert_eq!(orcpt_param("utf-8;j\u{f6}rg@x.test"), "");
    }
}
