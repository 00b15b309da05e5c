//! The `nats-k8s-callout` binary; everything is in the library (`cli` parses the arguments).

fn main() -> std::process::ExitCode {
    nats_k8s_callout::cli::main()
}
