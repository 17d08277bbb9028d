"""`python -m llmops.store list | gc | verify` (see llmops.store.command)."""

import sys

from llmops.store.command import main

sys.exit(main())
