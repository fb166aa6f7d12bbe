"""`python -m plinth ...` runs the CLI (and so does `torchrun -m plinth ...`)."""

import sys

from plinth.cli.main import main

sys.exit(main())
