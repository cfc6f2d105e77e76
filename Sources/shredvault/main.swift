import VaultCLI

await ShredVaultCommand.main()
