"""The subcommands, one module each with main(args) -> int; dlexp/cli.py dispatches to them."""
