"""`python -m oscar_eval` = `oscar-eval`."""

import sys

from oscar_eval.cli import main

sys.exit(main())
