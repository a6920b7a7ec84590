"""The Whisper decoder's loop guard: a hypothesis ending in a loop gets only the end token (Whisper's
``transcribe`` would re-decode it at a higher temperature; greedy decoding has no fallback)."""

from typing import Sequence

# the defaults: a 3-token span must repeat 4 times, a 1-token span 12
LOOP_REPEATS, LOOP_TOKENS = 4, 12


def ends_in_loop(tokens: Sequence[int], repeats: int, min_tokens: int) -> bool:
    """Whether ``tokens`` ends in one span repeated >= ``repeats`` times over >= ``min_tokens`` tokens."""
    n = len(tokens)
    for span in range(1, n // repeats + 1):
        count = max(repeats, -(-min_tokens // span))
        if count * span > n:
            continue
        tail = list(tokens[n - count * span:])
        if tail == tail[-span:] * count:
            return True
    return False
