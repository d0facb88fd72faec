//! `mailflow-policy`: the policy service.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    mailflow_runtime::service::main(
        |c| mailflow_runtime::service::Process {
            name: "mailflow-policy",
            worker_threads: c.policy.worker_threads,
            metrics_listen: c.policy.metrics_listen,
        },
        mailflow_policy::run,
    )
}
