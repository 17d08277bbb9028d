"""Runs the store command: python -m llmops.store list | gc | verify (see llmops.store.command)."""

import sys

from llmops.store.command import main

if __name__ == "__main__":
    sys.exit(main())
