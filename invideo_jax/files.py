"""Atomic file writes: a reader sees the old file or the whole new one, never part of one."""
import os

PARTIAL = ".partial-"  # infix of temporary files


def atomic_write(path: str, write) -> None:
    """`write(binary file)` into a temporary file beside `path`, then renamed to `path`."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}{PARTIAL}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
