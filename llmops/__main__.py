"""Runs llmops: python -m llmops [group=option ...] [key=value ...]."""

from llmops.cli import main

if __name__ == "__main__":
    main()
