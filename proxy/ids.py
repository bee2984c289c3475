"""Process-unique ids without a system call per id: a random per-process prefix and a counter."""

from __future__ import annotations

import itertools
import os
import secrets


class UniqueIds:
    """Fresh ids of 32 hex digits: 16 drawn at random per process, 16 from a counter.

    As unique as a random id (the prefix is drawn again in every forked worker) without asking
    the kernel for randomness each time. Not secret: never use one as a credential.
    """

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        """Draw a new prefix and restart the counter at a random point."""
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(secrets.randbelow(1 << 32))

    def next(self) -> str:
        """The next id."""
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFFFFFF:016x}"
