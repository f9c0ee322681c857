"""Where things are, for tests that run the project's commands."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository
