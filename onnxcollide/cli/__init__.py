"""The command line: one module per command, shared options, the entry point."""
