"""``python -m stream_app`` runs the CLI."""

from stream_app.cli import main

main()
