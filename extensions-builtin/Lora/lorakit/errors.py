"""The extension's exception root: `LoraError` is a problem with a user's LoRA, prompt, file or input whose message
is meant for that user ("Lora x not applied: ..."). Boundaries (the engine's activation, the API, the cards, the
tools and their tab) catch `LoraError` (and `OSError` where they touch files) and nothing wider, so a real bug (a
`ValueError`, `TypeError`, ... raised by our own code) is not mistaken for a bad file: it propagates and is logged
with its traceback.

`FormatError` is the branch for file content that does not fit a format (unreadable files, malformed strategy parts,
groups no strategy claims). It also derives from `ValueError`: the format and algorithm modules are pure functions
over values, and their callers (and tests) may treat a malformed value as the `ValueError` it is.
"""

from __future__ import annotations


class LoraError(Exception):
    """A user-facing problem with a LoRA, a prompt tag, a file or a tool input; the message says what and where."""


class FormatError(LoraError, ValueError):
    """File content that does not fit its format (the message names the file or key and the shapes)."""


class PartsError(FormatError):
    """One layer's group of tensors is malformed for the strategy that claims it (shape mismatch, NaN/Inf, rank 0)."""
