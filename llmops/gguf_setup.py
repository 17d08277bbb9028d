"""Installs llama.cpp's HF -> GGUF converter at the pinned version: python -m llmops.gguf_setup.

The converter (convert_hf_to_gguf.py, its conversion/ package and gguf-py) is not on PyPI as a
package; it ships inside the llama-cpp-python source distribution. This command fetches that sdist
from the package registry through pip (or takes one already downloaded, --sdist PATH), unpacks only
the converter into a cache folder, and records the version. Nothing is cloned or downloaded when a
plan runs: the gguf stage only looks the folder up (llmops.serving.converter) and names this command
when it is missing.

    pip install 'llmops[gguf]'
    python -m llmops.gguf_setup                 # ~75 MB download, once
    python -m llmops.gguf_setup --sdist llama_cpp_python-0.3.36.tar.gz
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from llmops.errors import StageError
from llmops.serving.converter import LLAMA_CPP_PYTHON_VERSION, MARKER, VOCAB_FILES, converter_dir

_VENDOR = "vendor/llama.cpp/"
#: The converter, plus the vocab-only GGUF files of real tokenizers that llama.cpp ships for its own
#: tokenizer tests (Qwen2, Llama 3, Phi-3): offline tests build small real-vocabulary models from
#: them (tests/real_models.py); nothing in a plan reads them.
_KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE",
         *(f"models/{name}" for name in VOCAB_FILES))


def _download_sdist(version: str, dest: Path) -> Path:
    """Downloads the llama-cpp-python sdist of the given version with pip; returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"llama-cpp-python=={version}", "-d", str(dest)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        raise StageError(f"gguf_setup: pip downloaded no llama-cpp-python sdist into {dest}.")
    return found[0]


def unpack_converter(sdist: Path, version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """Unpacks convert_hf_to_gguf.py, conversion/ and gguf-py/ from the sdist into the cache."""
    target = converter_dir(version)
    tmp = Path(tempfile.mkdtemp(prefix="llama.cpp-", dir=target.parent if target.parent.exists()
                                else None))
    n = 0
    with tarfile.open(sdist, "r:gz") as tar:
        members = []
        for m in tar.getmembers():
            _, _, rel = m.name.partition("/")
            if not rel.startswith(_VENDOR):
                continue
            inner = rel[len(_VENDOR):]
            if (m.isfile() or m.isdir()) and any(inner == k or inner.startswith(k) for k in _KEEP):
                m.name = inner
                members.append(m)
        tar.extractall(tmp, members=members, filter="data")
        n = sum(1 for m in members if m.isfile())
    if not (tmp / "convert_hf_to_gguf.py").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise StageError(f"gguf_setup: {sdist} holds no {_VENDOR}convert_hf_to_gguf.py.")
    (tmp / MARKER).write_text(json.dumps({"llama_cpp_python": version, "sdist": sdist.name,
                                           "files": n}, indent=2))
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    """Fetches (or takes) the pinned sdist and unpacks the converter; prints where it went."""
    ap = argparse.ArgumentParser(prog="python -m llmops.gguf_setup", description=__doc__.split(
        "\n")[0])
    ap.add_argument("--sdist", type=Path, help="an already downloaded llama-cpp-python sdist")
    ap.add_argument("--version", default=LLAMA_CPP_PYTHON_VERSION)
    ap.add_argument("--force", action="store_true", help="unpack again even when present")
    args = ap.parse_args(argv)
    folder = converter_dir(args.version)
    complete = all((folder / "models" / name).is_file() for name in VOCAB_FILES)
    if (folder / MARKER).is_file() and complete and not args.force and args.sdist is None:
        print(f"llama.cpp converter (llama-cpp-python {args.version}) already in {folder}")
        return 0
    try:
        import llama_cpp  # noqa: F401 - only to compare versions

        installed = getattr(llama_cpp, "__version__", None)
        if installed and installed != args.version:
            print(f"warning: llama-cpp-python {installed} is installed, converter is "
                  f"{args.version}; pip install 'llmops[gguf]' to match.", file=sys.stderr)
    except ImportError:
        print("note: llama-cpp-python is not installed; pip install 'llmops[gguf]' to run and "
              "serve GGUF models.", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or _download_sdist(args.version, Path(tmp))
        out = unpack_converter(Path(sdist), args.version)
    print(f"llama.cpp converter (llama-cpp-python {args.version}) unpacked into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
