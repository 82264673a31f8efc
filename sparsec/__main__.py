"""`python -m sparsec` runs the CLI."""

from sparsec.cli import app

app()
