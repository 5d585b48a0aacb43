"""Atomic file writes: the one place that writes through a temporary file and renames it over the target.

Every output of the package (masks, reports, overlays, models, engines, manifests, training checkpoints) goes
through :func:`atomic_write`: readers never see a half-written file, an interrupted write leaves the old file (or
none), and the data is on disk (fsync) before the rename makes it visible.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

PathLike = str | os.PathLike[str]

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]


def _new_file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        pass
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".nii.gz", ".tar.gz"):
        if name.endswith(suffix):
            return path.name[-len(suffix) :]
    return path.suffix


_MKSTEMP_RANDOM_CHARS = 8  # tempfile's random part of a name


def _name_max(folder: Path) -> int:
    """The longest file name, in bytes, that ``folder``'s file system allows (255 when it cannot say)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _temporary_prefix(target: Path, suffix: str) -> str:
    """``.<name>.`` for a temporary file beside ``target``, the name cut so the whole fits the file system.

    A temporary name is ``prefix + 8 random characters + suffix``; a target whose name is itself near the
    limit would otherwise get a temporary name that is too long, and a legal output could not be written.
    """
    room = _name_max(target.parent) - len(os.fsencode(suffix)) - _MKSTEMP_RANDOM_CHARS - 2
    name = target.name
    while name and len(os.fsencode(name)) > room:  # cut whole characters: the limit counts encoded bytes
        name = name[:-1]
    return f".{name}."


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Write a file atomically: yield a temporary path in the same folder, then rename it over ``path``.

    The temporary file keeps ``path``'s suffix (so writers that look at it, like nibabel, pick the right
    format). When the block raises, the temporary file is removed and ``path`` is left untouched; readers never
    see a half-written file.

    Args:
        path: The final file.

    Yields:
        The temporary path to write to (it exists, empty).

    Raises:
        OSError: The folder does not exist or is not writable (the message names ``path``).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    target = Path(path)
    suffix = f".tmp{_suffix(target)}"
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=_temporary_prefix(target, suffix), suffix=suffix, dir=target.parent
        )
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {target}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _new_file_mode(target))
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and str(target) not in str(exc):
            raise OSError(exc.errno, f"cannot write {target}: {exc.strerror or exc}") from exc
        raise


def atomic_write_bytes(path: PathLike, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`), creating missing parent folders.

    Returns:
        The written path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as tmp:
        tmp.write_bytes(data)
    return target


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write_bytes`).

    Returns:
        The written path.
    """
    return atomic_write_bytes(path, text.encode("utf-8"))
