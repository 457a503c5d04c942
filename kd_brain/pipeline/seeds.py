"""Per-utterance seeds: every random draw of one utterance, the same in every process and run.

Python's ``hash()`` of a str changes per interpreter (PYTHONHASHSEED), so
ranks, resumed runs and reruns would draw differently; a SHA-256 of the
parts does not. The contaminator (noise, rooms, SNRs per epoch), the fixed
test conditions (epoch 0) and the sampled soft-label target all seed here.
"""

import hashlib


def seed_for(base_seed, epoch, utt_id):
    """A 63-bit seed from ``(base_seed, epoch, utt_id)``, stable across processes and runs.

    Example
    -------
    >>> seed_for(1, 0, "u1") == seed_for(1, 0, "u1") != seed_for(1, 1, "u1")
    True
    """
    digest = hashlib.sha256(f"{base_seed}|{epoch}|{utt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
