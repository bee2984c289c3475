"""Heavy work on large JSON values, run off the event loop so one big trigger stalls no one.

Parsing, checking and redacting a trigger body of a few MiB takes about a second of pure Python;
on the event loop every other request of the process would wait that long. ``off_loop`` runs such
work on a small dedicated thread pool (``WORKERS`` threads: a bound on the memory and CPU that
large bodies can take at once; more wait their turn), and ``sized`` does so only when the input is
large enough for the hand-over to pay (``INLINE_BELOW`` bytes). The threads still share the GIL
with the loop, but the interpreter switches between them every few milliseconds, so the loop keeps
answering.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, ParamSpec, TypeVar

INLINE_BELOW: Final = 64 * 1024
WORKERS: Final = 2

P = ParamSpec("P")
T = TypeVar("T")
_executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="saga-json")


async def off_loop(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``function(*args, **kwargs)`` run on the JSON thread pool, awaited from the loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, functools.partial(function, *args, **kwargs))


async def sized(size: int, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``function(...)``: inline for an input under ``INLINE_BELOW`` bytes, else off the loop."""
    if size < INLINE_BELOW:
        return function(*args, **kwargs)
    return await off_loop(function, *args, **kwargs)
