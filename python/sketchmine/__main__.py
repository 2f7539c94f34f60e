"""`python -m sketchmine ...` is the CLI (also what torchrun launches)."""
import sys

from sketchmine.cli.main import main

sys.exit(main())
