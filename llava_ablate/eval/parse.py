"""Map a generated answer to an option: a letter ("B", "(B)", "B.", "Answer: B") or a class name.

Whatever cannot be mapped unambiguously returns None; the caller records the raw text and counts
it wrong (VLMClassifier-style "discard what does not parse" would inflate accuracy).
"""

from __future__ import annotations

import re

from llava_ablate.base.mcq import LETTERS

_PREFIX = re.compile(
    r"^\s*(?:the\s+)?(?:correct\s+|best\s+|final\s+)?(?:answer|option|choice)"
    r"(?:\s+is)?\s*[:\-]?\s*",
    re.IGNORECASE,
)
# A letter standing alone: "B", "(B)", "B.", "B)", "B:", "[B]", "**B**", followed by nothing
# alphanumeric.
_LONE = re.compile(r"^[\s*\[(]*([A-Z])[\s*\])]*(?:[.:)\-]|$)(.*)$", re.DOTALL)
_PAREN = re.compile(r"\(([A-Z])\)")
_IS_LETTER = re.compile(r"\b(?:answer|option|choice)\s+(?:is\s+)?\(?([A-Z])\b\)?", re.IGNORECASE)


def _name_hits(text: str, options: list[str]) -> list[int]:
    low = text.lower()
    hits = [
        i
        for i, opt in enumerate(options)
        if re.search(rf"(?<![a-z0-9]){re.escape(opt.lower())}(?![a-z0-9])", low)
    ]
    # "tabby cat" also contains "cat": keep only names no other hit contains.
    return [
        i
        for i in hits
        if not any(j != i and options[i].lower() in options[j].lower() for j in hits)
    ]


def parse_choice(text: str, options: list[str]) -> str | None:
    """The chosen option's letter, or None when the text names no single option."""
    k = len(options)
    valid = set(LETTERS[:k])
    body = _PREFIX.sub("", text.strip(), count=1).strip()

    paren = {m for m in _PAREN.findall(body) if m in valid}
    lone = _LONE.match(body)
    if lone and lone.group(1) in valid and paren <= {lone.group(1)}:
        letter, rest = lone.group(1), lone.group(2).strip().strip(".").strip()
        # "A dog" is an article, not option A, unless the rest names option A itself.
        if not rest or body[1:2] in ".:)-]*" or body[0] in "([*":
            return letter
        if rest.lower() == options[LETTERS.index(letter)].lower():
            return letter

    letters = set(paren)
    letters |= {m.upper() for m in _IS_LETTER.findall(text) if m.upper() in valid}
    if len(letters) == 1:
        return letters.pop()

    hits = _name_hits(body, options)
    if len(hits) == 1:
        return LETTERS[hits[0]]
    return None
