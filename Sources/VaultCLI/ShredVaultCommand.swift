public import ArgumentParser

/// The `shredvault` command: configuration only; each subcommand lives in its own file.
public struct ShredVaultCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "shredvault",
        abstract: "An encrypted records vault: every record under its own key; erasing means destroying keys.",
        discussion: """
            Client commands talk to the daemon over its Unix socket: --socket PATH, else \
            $SHREDVAULT_SOCKET, else ./data/shredvault.sock. The bearer token comes from \
            --token-file FILE or $SHREDVAULT_TOKEN, never from the command line; subjects \
            come from files or standard input for the same reason. Output is readable text; \
            --json prints the daemon's answer as received. Failures print \
            `shredvault: <what went wrong>` on stderr and exit 1.
            """,
        groupedSubcommands: [
            CommandGroup(name: "Running a vault", subcommands: [
                InitCommand.self, ServeCommand.self, RestoreCommand.self, HealthCommand.self, BenchCommand.self,
            ]),
            CommandGroup(name: "Records (agent or admin token)", subcommands: [PutCommand.self, GetCommand.self]),
            CommandGroup(name: "Client instructions (admin token)", subcommands: [
                EraseCommand.self, ExportCommand.self, RetentionCommand.self, HoldCommand.self, ReportCommand.self,
            ]),
            CommandGroup(name: "Operating (operator token)", subcommands: [
                TenantCommand.self, TokenCommand.self, RotateCommand.self, SweepCommand.self, CompactCommand.self, SnapshotCommand.self, PromoteCommand.self,
                StatsCommand.self,
            ]),
            CommandGroup(name: "Audit (admin or operator token)", subcommands: [AuditCommand.self]),
        ])

    public init() {}
}
