"""Sub-commands of `oscar-eval`, one module each (see oscar_eval.cli)."""
