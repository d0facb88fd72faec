//! AUTH (RFC 4954) with PLAIN and LOGIN, accepted only over TLS. The credentials are
//! verified by the policy service, which also counts failures per client IP.

use mailflow_proto::v1::AuthenticateRequest;
use mailflow_proto::v1::authenticate_response::Result as AuthResult;
use mailflow_smtp::sasl::{self, Credentials, Mechanism, SaslError};
use mailflow_smtp::{EnhancedCode, Reply};

use super::{Backend, Flow, Input, Session, SessionError, State, bad_sequence};

/// How reading one SASL response line ended, when it did not produce the line.
enum Interrupted {
    /// The flow the session should take (close on timeout or EOF).
    Flow(Flow),
    /// The client's answer was refused with this reply.
    Refused(Reply),
}

impl<S, B> Session<S, B>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    B: Backend,
{
    /// Runs an AUTH exchange.
    pub(super) async fn auth(&mut self, args: &str) -> Result<Flow, SessionError> {
        let helo = match &self.state {
            State::Fresh => return Ok(self.refuse(bad_sequence("Error: send EHLO first"))),
            State::Mail(..) => {
                return Ok(self.refuse(bad_sequence("Error: MAIL transaction in progress")));
            }
            State::Ready(g) => g.name.clone(),
        };
        if self.tls.is_none() {
            return Ok(self.refuse(Reply::new(
                530,
                EnhancedCode::new(5, 7, 0),
                "Must issue a STARTTLS command first",
            )));
        }
        if self.auth.is_some() {
            return Ok(self.refuse(bad_sequence("Error: already authenticated")));
        }
        let mut words = args.split_ascii_whitespace();
        let Some(named) = words.next() else {
            return Ok(self.refuse(Reply::new(
                501,
                EnhancedCode::new(5, 5, 4),
                "Syntax: AUTH mechanism",
            )));
        };
        let Some(mechanism) = Mechanism::parse(named) else {
            return Ok(self.refuse(Reply::new(
                504,
                EnhancedCode::new(5, 5, 4),
                "Unrecognized authentication type",
            )));
        };
        let initial = words.next().map(str::to_string);
        let credentials = match self.exchange(mechanism, initial).await? {
            Ok(c) => c,
            Err(Interrupted::Flow(flow)) => return Ok(flow),
            Err(Interrupted::Refused(reply)) => return Ok(self.refuse(reply)),
        };
        let request = AuthenticateRequest {
            session: Some(self.session_info(&helo)),
            mechanism: mechanism.name().into(),
            username: credentials.username,
            password: credentials.password,
        };
        let response = match self.backend.authenticate(request).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "authentication could not be checked");
                return Ok(self.refuse(Reply::new(
                    454,
                    EnhancedCode::new(4, 7, 0),
                    "Temporary authentication failure",
                )));
            }
        };
        Ok(match response.result() {
            AuthResult::Ok => {
                tracing::info!(identity = %response.identity, "authenticated");
                self.auth = Some(response.identity);
                self.reply(Reply::new(
                    235,
                    EnhancedCode::new(2, 7, 0),
                    "Authentication successful",
                ));
                Flow::Continue
            }
            AuthResult::TooManyFailures => {
                let text = format!(
                    "{} Error: too many failed authentication attempts",
                    self.config.hostname
                );
                self.reply(Reply::new(421, EnhancedCode::new(4, 7, 0), text));
                Flow::Close
            }
            // An answer this version does not know is no verdict on the password.
            AuthResult::Unspecified => self.refuse(Reply::new(
                454,
                EnhancedCode::new(4, 7, 0),
                "Temporary authentication failure",
            )),
            AuthResult::BadCredentials => {
                metrics::counter!("mailflow_auth_failures_total").increment(1);
                self.refuse(Reply::new(
                    535,
                    EnhancedCode::new(5, 7, 8),
                    "Error: authentication failed",
                ))
            }
        })
    }

    /// Collects the credentials, prompting with `334` as the mechanism needs.
    async fn exchange(
        &mut self,
        mechanism: Mechanism,
        initial: Option<String>,
    ) -> Result<Result<Credentials, Interrupted>, SessionError> {
        let refused = |e: SaslError| {
            Interrupted::Refused(match e {
                SaslError::Cancelled => {
                    Reply::new(501, EnhancedCode::new(5, 7, 0), "Authentication aborted")
                }
                SaslError::Malformed => {
                    Reply::new(501, EnhancedCode::new(5, 5, 2), "Cannot decode response")
                }
                SaslError::AuthzidMismatch => Reply::new(
                    535,
                    EnhancedCode::new(5, 7, 8),
                    "Error: authentication failed",
                ),
            })
        };
        Ok(match mechanism {
            Mechanism::Plain => {
                let message = match initial {
                    Some(line) => sasl::decode_response(&line),
                    None => match self.prompt("").await? {
                        Ok(line) => sasl::decode_response(&line),
                        Err(i) => return Ok(Err(i)),
                    },
                };
                message.and_then(|m| sasl::parse_plain(&m)).map_err(refused)
            }
            Mechanism::Login => {
                let username = match initial {
                    Some(line) => sasl::decode_response(&line),
                    None => match self.prompt("Username:").await? {
                        Ok(line) => sasl::decode_response(&line),
                        Err(i) => return Ok(Err(i)),
                    },
                };
                let username = match username {
                    Ok(u) => u,
                    Err(e) => return Ok(Err(refused(e))),
                };
                match self.prompt("Password:").await? {
                    Ok(line) => sasl::decode_response(&line)
                        .map(|password| Credentials { username, password })
                        .map_err(refused),
                    Err(i) => Err(i),
                }
            }
        })
    }

    /// Sends a `334` challenge and reads the answer line.
    async fn prompt(
        &mut self,
        challenge: &str,
    ) -> Result<Result<String, Interrupted>, SessionError> {
        self.reply(Reply::plain(334, sasl::encode_challenge(challenge)));
        Ok(match self.next_line().await? {
            Input::Line(line) => match String::from_utf8(line.to_vec()) {
                Ok(text) => Ok(text),
                Err(_) => Err(Interrupted::Refused(Reply::new(
                    501,
                    EnhancedCode::new(5, 5, 2),
                    "Cannot decode response",
                ))),
            },
            Input::TooLong => Err(Interrupted::Refused(Reply::new(
                500,
                EnhancedCode::new(5, 5, 6),
                "Authentication exchange line is too long",
            ))),
            Input::Closed => Err(Interrupted::Flow(Flow::Close)),
            Input::TimedOut => {
                let text = format!("{} Error: timeout exceeded", self.config.hostname);
                self.reply(Reply::new(421, EnhancedCode::new(4, 4, 2), text));
                Err(Interrupted::Flow(Flow::Close))
            }
            Input::Shutdown => {
                let text = format!("{} Service shutting down", self.config.hostname);
                self.reply(Reply::new(421, EnhancedCode::new(4, 3, 2), text));
                Err(Interrupted::Flow(Flow::Close))
            }
        })
    }
}
