import VaultCLI

// Called from inside an async function on purpose: in top-level code, `main()` resolves to
// ParsableCommand's synchronous overload, which refuses to run async subcommands (init, serve).
func start() async { await ShredVaultCommand.main() }
await start()
