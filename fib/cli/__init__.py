"""The command line: one module per command group; each parses, calls a function, prints and sets the exit code."""
