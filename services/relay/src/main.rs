//! `mailflow-relay`: the delivery service.

fn main() -> std::process::ExitCode {
    mailflow_runtime::service::main(|c| c.relay.worker_threads, mailflow_relay::run)
}
