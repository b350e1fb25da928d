"""The `guard` command line. Subcommands import their heavy modules only when they run."""
