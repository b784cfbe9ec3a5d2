"""The multiple-choice format shared by training data and evaluation: options lettered A..Z,
one `A. name` line each (LLaVA's MCQ format)."""

from __future__ import annotations

import string

LETTERS = string.ascii_uppercase  # at most 26 options


def lettered_options(options: list[str]) -> list[str]:
    """`["A. tench", "B. goldfish", ...]`."""
    if len(options) > len(LETTERS):
        raise ValueError(f"{len(options)} options: at most {len(LETTERS)} can be lettered")
    return [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
