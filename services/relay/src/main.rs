//! `mailflow-relay`: the delivery service.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    mailflow_runtime::service::main(mailflow_relay::run).await
}
