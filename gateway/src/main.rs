fn main() -> std::process::ExitCode {
    soundbox_gateway::cli::main()
}
