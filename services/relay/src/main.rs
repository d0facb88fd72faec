//! `mailflow-relay`: the delivery service.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    mailflow_runtime::service::main(
        |c| mailflow_runtime::service::Process {
            name: "mailflow-relay",
            worker_threads: c.relay.worker_threads,
            metrics_listen: c.relay.metrics_listen,
        },
        mailflow_relay::run,
    )
}
