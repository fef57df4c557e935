"""CLI subcommands. Every module here defines ``register(subparsers)``; cli.py discovers them all.

A module adds one or more subcommands with ``subparsers.add_parser(...)`` and sets
``parser.set_defaults(func=run)`` where ``run(args) -> int | None``.
"""
