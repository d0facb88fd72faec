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
        // The data rate of a kept chunk counts with the transaction's earlier chunks; a
        // refused one is only read to stay in step.
        let mut rate = match &self.state {
            State::Mail(_, tx) if refusal.is_none() => match &tx.chunks {
                Chunks::Receiving(_, _, rate) => *rate,
                _ => unreachable!("started above"),
            },
            _ => RateGuard::new(),
        };
        if let Some(flow) = self.read_chunk(size, refusal.is_none(), &mut rate).await? {
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
        let Chunks::Receiving(mut body, incoming, _) =
            std::mem::replace(&mut tx.chunks, Chunks::None)
        else {
            unreachable!("set above");
        };
        if last {
            return Ok(self.complete(incoming, body.finish()).await);
        }
        if let Some(flow) = self.check_rate(&rate) {
            incoming.abort().await;
            return Ok(flow);
        }
        let received = body.body().len();
        let State::Mail(_, tx) = &mut self.state else {
            unreachable!("a chunk is kept only in a transaction");
        };
        tx.chunks = Chunks::Receiving(body, incoming, rate);
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
            tx.chunks = Chunks::Receiving(body, incoming, RateGuard::new());
        }
    }

    /// Reads `size` octets, feeding them to the transaction's body when `keep`, and
    /// counting them in `rate`.
    async fn read_chunk(
        &mut self,
        size: u64,
        keep: bool,
        rate: &mut RateGuard,
    ) -> Result<Option<Flow>, SessionError> {
        let mut remaining = size;
        loop {
            let take = remaining.min(self.inbuf.len() as u64) as usize;
            if keep
                && let State::Mail(_, tx) = &mut self.state
                && let Chunks::Receiving(body, incoming, _) = &mut tx.chunks
            {
                body.feed(&self.inbuf[..take]);
                incoming.absorb(&self.backend, body.body()).await;
            }
            self.inbuf.advance(take);
            rate.count(take);
            remaining -= take as u64;
            if remaining == 0 {
                return Ok(None);
            }
            if let Some(flow) = self.fill_data(rate).await? {
                return Ok(Some(flow));
            }
        }
    }
}
