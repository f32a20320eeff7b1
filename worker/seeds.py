"""The seed documents' sample bodies, read from the files as written.

The seeds (`schemas/seeds/`, verbatim copies of the source documents) are what producers were
given; their samples are published by `worker dev` and are test cases.
"""

from __future__ import annotations

import re
from importlib import resources

PROCTORING_SEED = "000_9bc4ef1cc485ee9a.txt"
INTERVIEW_SEED = "003_ef4b1b5b648529a0.txt"

_JSON_BLOCK = re.compile(r"```json[^\n]*\n(.*?)```", re.S)


def seed_text(name: str) -> str:
    return resources.files("schemas").joinpath("seeds", name).read_text(encoding="utf-8")


def json_blocks(name: str) -> list[str]:
    """Every ```json block of a seed document, exactly as written (indentation included)."""
    return _JSON_BLOCK.findall(seed_text(name))


def interview_samples() -> list[bytes]:
    """The nine sample request bodies of the micro1 seed, in document order."""
    return [block.encode("utf-8") for block in json_blocks(INTERVIEW_SEED)]


def system_check_example() -> bytes:
    """The SystemCheck example payload of the Proctorme seed (a `systemCheck` value)."""
    (block,) = json_blocks(PROCTORING_SEED)
    return block.encode("utf-8")
