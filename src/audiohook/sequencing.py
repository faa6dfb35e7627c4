"""When may a ``$default`` invocation apply its client message? (sans-I/O)

API Gateway may run invocations of one connection concurrently and out of order. Each
invocation reads the stored session and asks :func:`decide`:

- APPLY: the message is the next one (``seq == clientseq + 1``) and every server
  message produced so far has been delivered, so our replies cannot overtake earlier ones;
- DUPLICATE: this exact message was applied already (same seq, same text digest);
- WAIT: a predecessor is still missing, or earlier replies are still being posted;
- APPLY also once the wait budget is spent: the core then answers the real gap with a
  protocol error (``seq`` not previous+1), or, for a stuck delivery, we post anyway rather
  than stall the session.

See docs/sequencing.md for the whole protocol between invocations.
"""

from __future__ import annotations

import enum
import hashlib

RECENT_DIGESTS = 8


class Action(enum.Enum):
    APPLY = "apply"
    DUPLICATE = "duplicate"
    WAIT = "wait"


def digest(text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def decide(
    *, seq: int | None, text_digest: str, clientseq: int, seq_sent: int, delivered: int,
    recent: dict[str, str], budget_left: bool, numbering_over: bool = False,
) -> Action:
    """``seq`` is the message's seq when it could be read (None: unreadable, apply at once).

    ``numbering_over``: the session already ended in a protocol error; only its close is
    still answered, whatever its seq, so there is no predecessor worth waiting for.
    """
    if seq is not None and seq <= clientseq:
        if recent.get(str(seq)) == text_digest:
            return Action.DUPLICATE
        return Action.APPLY  # a different message reusing an old seq: the core reports it
    if not budget_left or numbering_over:
        return Action.APPLY
    if seq is not None and seq > clientseq + 1:
        return Action.WAIT
    if delivered < seq_sent:
        return Action.WAIT
    return Action.APPLY


def remember(recent: dict[str, str], seq: int, text_digest: str) -> dict[str, str]:
    """The digests of the last few applied messages, for duplicate detection."""
    kept = {key: value for key, value in recent.items() if int(key) > seq - RECENT_DIGESTS}
    kept[str(seq)] = text_digest
    return kept
