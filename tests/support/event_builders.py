"""Small builders of record values for the decode and wire-format tests."""

from __future__ import annotations

import json
from typing import Any


def proctoring(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "examId": "exam-1",
        "candidateId": "cand-1",
        "type": "TAB_NOT_FOCUS",
        "description": "Candidate switched to another tab",
        "createdAt": "2025-09-21T12:00:00Z",
    }
    value.update(overrides)
    return value


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def sample(body: bytes, **data: Any) -> bytes:
    """A seed sample with some of its `data` fields replaced."""
    value = json.loads(body)
    value["data"].update(data)
    return encode(value)
