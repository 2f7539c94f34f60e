"""The command line (`sketchmine ...`) and the demo."""
from sketchmine.cli.main import main

__all__ = ["main"]
