"""The release folder's checksums and its .tar.gz bundle (for the release stage).

`SHA256SUMS` is in sha256sum's own format (`HASH  relative/path`, sorted), so
`sha256sum -c SHA256SUMS` in the unpacked folder verifies every file. The bundle lists its members
in sorted order with owners and the gzip timestamp cleared, is written to a temp name and renamed,
and a failure removes the temp file: no half-written bundle is ever left.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import uuid
from pathlib import Path

from llmops.core.fingerprint import file_sha256

SUMS = "SHA256SUMS"


def place(src: Path, dst: Path) -> None:
    """Copies the file src to dst. A copy, not a link: editing a released file must never change
    the store entry it came from."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def place_tree(src: Path, dst: Path) -> None:
    """Copies the folder src to dst, keeping its layout."""
    shutil.copytree(src, dst)


def files_of(folder: Path) -> list[Path]:
    """Returns the files under folder, relative to it, in sorted POSIX order."""
    return sorted((p.relative_to(folder) for p in folder.rglob("*") if p.is_file()),
                  key=lambda p: p.as_posix())


def write_sums(folder: Path) -> dict[str, str]:
    """Writes folder/SHA256SUMS over every other file under folder; returns path -> sha256."""
    sums = {p.as_posix(): file_sha256(folder / p) for p in files_of(folder) if p.as_posix() != SUMS}
    text = "".join(f"{digest}  {path}\n" for path, digest in sums.items())
    (folder / SUMS).write_text(text, encoding="utf-8")
    return sums


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def write_bundle(folder: Path, bundle: Path, top: str) -> None:
    """Writes bundle (.tar.gz) of folder's tree under the top folder name `top`, atomically."""
    tmp = bundle.parent / f".{bundle.name}.{uuid.uuid4().hex}.tmp"
    members = sorted((p.relative_to(folder) for p in folder.rglob("*")),
                     key=lambda p: p.as_posix())
    try:
        with open(tmp, "xb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(folder, arcname=top, recursive=False, filter=_normalise)
            for rel in members:
                tar.add(folder / rel, arcname=f"{top}/{rel.as_posix()}", recursive=False,
                        filter=_normalise)
        os.replace(tmp, bundle)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
