//! `mailflow-policy`: the policy service.

fn main() -> std::process::ExitCode {
    mailflow_runtime::service::main(|c| c.policy.worker_threads, mailflow_policy::run)
}
