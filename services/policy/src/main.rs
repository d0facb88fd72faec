//! `mailflow-policy`: the policy service.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    mailflow_runtime::service::main(mailflow_policy::run).await
}
