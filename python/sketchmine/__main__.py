"""`python -m sketchmine ...` is the CLI (also what torchrun launches)."""
import sys

from .cli import main

sys.exit(main())
