//! `mailflow-ingress`: the SMTP server.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    mailflow_runtime::service::main(mailflow_ingress::run).await
}
