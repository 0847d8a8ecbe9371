"""Token estimates for when an upstream reports no usage (a stream cut short, an upstream without usage).

Four characters per token is OpenAI's published rule of thumb for English; such usage is always marked
``estimated`` on the run record so nobody mistakes it for a provider's count.
"""

from __future__ import annotations


def estimate_tokens(text: str) -> int:
    if not text:
        return 0
    return max(1, (len(text) + 3) // 4)
