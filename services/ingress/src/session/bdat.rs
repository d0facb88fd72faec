//! BDAT (RFC 3030 CHUNKING): chunks of exact sizes. Every chunk is read in full, even when
//! it is refused, so the client and server stay in step.

use bytes::Buf;
use mailflow_smtp::bdat::{self, BdatBody};
use mailflow_smtp::{EnhancedCode, Reply};

use super::data::RateGuard;
use super::{Backend, Chunks, Flow, Session, SessionError, State, bad_sequence};

impl<S, B> Session<S, B>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    B: Backend,
{
    /// Receives one chunk; the LAST one completes the transaction.
    pub(super) async fn bdat(&mut self, args: &str) -> Result<Flow, SessionError> {
        let Some((size, last)) = bdat::parse_args(args) else {
            // Without a size the chunk cannot be told from the commands after it: end the
            // session rather than read message data as commands.
            self.reply(Reply::new(
                501,
                EnhancedCode::new(5, 5, 4),
                "Syntax: BDAT size [LAST]",
            ));
            return Ok(Flow::Close);
        };
        // Why this chunk is refused, if it is.
        let refusal = match &self.state {
            State::Mail(_, tx) if tx.rcpts.is_empty() => {
                Some(bad_sequence("Error: need RCPT command"))
            }
            State::Mail(_, tx) => match &tx.chunks {
                Chunks::Failed(reply) => Some(reply.clone()),
                Chunks::Receiving(..) | Chunks::None => None,
            },
            _ => Some(bad_sequence("Error: need MAIL command")),
        };
        if refusal.is_none() {
            self.start_chunks();
        }
        if let Some(flow) = self.read_chunk(size, refusal.is_none()).await? {
            return Ok(flow);
        }
        if let Some(reply) = refusal {
            if last {
                self.reset_transaction();
            } else if let State::Mail(_, tx) = &mut self.state {
                tx.chunks = Chunks::Failed(reply.clone());
            }
            return Ok(self.refuse(reply));
        }
        let State::Mail(_, tx) = &mut self.state else {
            unreachable!("a chunk is kept only in a transaction");
        };
        let Chunks::Receiving(mut body, incoming) = std::mem::replace(&mut tx.chunks, Chunks::None)
        else {
            unreachable!("set above");
        };
        if last {
            return Ok(self.complete(incoming, body.finish()).await);
        }
        let received = body.body().len();
        tx.chunks = Chunks::Receiving(body, incoming);
        self.reply(Reply::new(
            250,
            EnhancedCode::new(2, 0, 0),
            format!("{size} octets received, {received} in total"),
        ));
        Ok(Flow::Continue)
    }

    /// Sets the transaction up for chunks, at the first one.
    fn start_chunks(&mut self) {
        let fresh = matches!(&self.state, State::Mail(_, tx) if matches!(tx.chunks, Chunks::None));
        if !fresh {
            return;
        }
        let incoming = self.incoming();
        if let State::Mail(_, tx) = &mut self.state {
            let body = BdatBody::new(self.config.max_message_size, self.config.line_endings);
            tx.chunks = Chunks::Receiving(body, incoming);
        }
    }

    /// Reads `size` octets, feeding them to the transaction's body when `keep`.
    async fn read_chunk(&mut self, size: u64, keep: bool) -> Result<Option<Flow>, SessionError> {
        let mut remaining = size;
        let mut rate = RateGuard::new(self.inbuf.len());
        loop {
            let take = remaining.min(self.inbuf.len() as u64) as usize;
            if keep
                && let State::Mail(_, tx) = &mut self.state
                && let Chunks::Receiving(body, incoming) = &mut tx.chunks
            {
                body.feed(&self.inbuf[..take]);
                incoming.absorb(&self.backend, body.body()).await;
            }
            self.inbuf.advance(take);
            remaining -= take as u64;
            if remaining == 0 {
                return Ok(None);
            }
            if let Some(flow) = self.fill_data(&mut rate).await? {
                return Ok(Some(flow));
            }
        }
    }
}
