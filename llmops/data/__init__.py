"""Data: the bundled Task-API generator and readers of users' files."""

from pathlib import Path


def samples_dir() -> Path:
    """Returns the folder of shipped sample data files."""
    return Path(__file__).parent / "samples"
