"""The command line: a thin Typer layer over rollout.app, and its presenters (report,
watch, progress) and per-command session (listeners for display, GitHub, notifications)."""

from rollout.cli.main import cli, main

__all__ = ["cli", "main"]
