//! `mailflow-ingress`: the SMTP server.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    mailflow_runtime::service::main(
        |c| mailflow_runtime::service::Process {
            name: "mailflow-ingress",
            worker_threads: c.ingress.worker_threads,
            metrics_listen: c.ingress.metrics_listen,
        },
        mailflow_ingress::run,
    )
}
