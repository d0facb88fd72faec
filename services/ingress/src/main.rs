//! `mailflow-ingress`: the SMTP server.

fn main() -> std::process::ExitCode {
    mailflow_runtime::service::main(|c| c.ingress.worker_threads, mailflow_ingress::run)
}
