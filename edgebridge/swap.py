"""Putting a finished folder in place of another without ever losing either.

An export writes into a work folder beside the target (``.NAME.tmp-PID-*``) and, at the end, swaps it
in under a lock on the parent folder (``flock``), so two exports to one path cannot
both win: the second finds the target there and is refused (or, with ``--force``, replaces the first's
bundle whole). Replacing moves the old folder aside (``.NAME.old-PID-*``), moves the new one in, then
deletes the old one. A process killed between those two renames leaves no folder at the target and the
old one aside: ``recover`` (run by the next export to that path) puts it back, and removes the work
folders and old folders of processes that are gone.

``EDGEBRIDGE_FAULT=swap`` kills the process between the two renames, ``=commit`` just before the swap
(tests prove the recovery with them).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Iterator

from edgebridge.errors import BundleExistsError


@contextlib.contextmanager
def locked(target: Path) -> Iterator[None]:
    """Hold the lock of swaps in ``target``'s parent folder (``flock`` on the folder itself: no lock file)."""
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def work_dir(target: Path) -> Path:
    """A fresh work folder beside ``target``, named after this process."""
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))


def _alive(name: str, kind: str) -> bool:
    """Whether the process that made ``.NAME.<kind>-PID-...`` still runs."""
    try:
        pid = int(name.split(f".{kind}-", 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid() or kind == "tmp"


def recover(target: Path) -> list[str]:
    """Undo what a killed export left at ``target``; returns what was done (for the user's log)."""
    done = []
    with locked(target):
        olds = sorted(p for p in target.parent.glob(f".{target.name}.old-*") if not _alive(p.name, "old"))
        if olds and not target.exists():
            os.rename(olds.pop(), target)
            done.append(f"restored the bundle a killed export had moved aside to '{target.name}'")
        for path in olds + [p for p in target.parent.glob(f".{target.name}.tmp-*") if not _alive(p.name, "tmp")]:
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed '{path.name}', left by a killed export")
    return done


def swap_in(work: Path, target: Path, replace: bool) -> None:
    """Move ``work`` to ``target``; an existing target is replaced only with ``replace``."""
    with locked(target):
        if not target.exists():
            os.rename(work, target)
            return
        if not replace:
            raise BundleExistsError(f"'{target}' was created by someone else while this export ran.",
                                    hint="Pass --force to replace it, or choose another output folder.")
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
        old.rmdir()
        os.rename(target, old)
        fault("swap")
        try:
            os.rename(work, target)
        except OSError:
            os.rename(old, target)  # put the previous bundle back
            raise
    shutil.rmtree(old, ignore_errors=True)


def fault(point: str) -> None:
    """Test hook: ``EDGEBRIDGE_FAULT=<point>`` kills the process here (``commit``: bundle written, not moved
    in; ``swap``: old bundle moved aside, new one not yet in place)."""
    if os.environ.get("EDGEBRIDGE_FAULT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
