"""Hot reload (docs/OPERATIONS.md, Reloading): SIGHUP, ``POST /reload`` on the admin listener
and, with ``reload.watch``, a change of the files re-read the config and the saga files.

``plan`` decides which settings a reload applies and which keep their value until a restart;
``reloader`` reads, validates and applies them all or nothing; ``watch`` polls the files.
"""

from __future__ import annotations

from proxy.reload.reloader import Reloader, ReloadResult
from proxy.reload.watch import watch

__all__ = ["ReloadResult", "Reloader", "watch"]
