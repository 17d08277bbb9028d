"""Drops the resident pages of this process's memory-mapped Arrow files (``datasets``' cache).

``datasets`` memory-maps its Arrow files; every page a pass reads stays in the process's
resident set until the kernel needs it back, so reading a million rows' text once shows up as a
gigabyte of RSS. ``release()`` tells the kernel (``madvise(MADV_DONTNEED)``) that this process
no longer needs those pages: they are clean, read-only file pages, so they stay in the page
cache and a later read maps them in again, unchanged. Each fault also maps in its neighbours
(fault-around, 64 KB; ``MADV_RANDOM`` does not stop it on Linux 6.18), so a pass that picks rows
in shuffled order must read them in file order a step at a time (``data_io.write_rows``).
Linux only (``/proc/self/maps``); a no-op elsewhere.
"""

from __future__ import annotations

import ctypes
import mmap
import os

_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
_MAPS = "/proc/self/maps"
_libc: ctypes.CDLL | None = None


def release(suffix: str = ".arrow") -> int:
    """Drops the resident pages of the read-only mappings of files named ``*suffix``.

    Returns:
        The bytes of the mappings advised (0 where the platform cannot).
    """
    return _advise(_DONTNEED, suffix)


def _advise(advice: int | None, suffix: str) -> int:
    global _libc
    if advice is None or not os.path.exists(_MAPS):
        return 0
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    done = 0
    with open(_MAPS, encoding="utf-8", errors="replace") as maps:
        for entry in maps:
            # address perms offset dev inode path; only read-only (never dirty) file mappings
            fields = entry.rstrip("\n").split(maxsplit=5)
            if len(fields) < 6 or "w" in fields[1] or not fields[5].endswith(suffix):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start),
                             advice) == 0:
                done += end - start
    return done
