"""User-given file names, confined to their directory.

Checkpoint names, input image names and save prefixes come from workflow files, `--set` and HTTP requests. Every
one of them passes `check_relative_name` (no `..`, absolute path, NUL byte or backslash) before it touches the disk.

Two kinds of folder differ in what a symlink inside them may do:
- input and output folders are filled by users and uploads: `confine` and `list_files` refuse a symlink that
  leads outside the folder;
- model folders are filled by the operator, who symlinks checkpoints in from a shared models tree: `path_under` and
  `list_files(..., follow_links=True)` follow such links wherever they lead. A name still cannot leave the folder
  by itself; only a link the operator placed there can.
"""

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath


class UnsafePath(ValueError):
    """A user-given name that would leave its directory (or is not a usable name at all)."""


def confine(root: Path, name: str) -> Path:
    """The path of `name` inside `root`, symlinks resolved; raises UnsafePath if it would end up outside `root`.

    `name` is a relative, '/'-separated name such as "photo.png" or "sd15/model.safetensors". The file need not exist.
    """
    relative = check_relative_name(name)
    root = Path(root).resolve()
    path = (root / relative).resolve()  # follows symlinks, so one pointing outside is caught below
    if not path.is_relative_to(root) or path == root:
        raise UnsafePath(f"{name!r} is outside {root}")
    return path


def path_under(root: Path, name: str) -> Path:
    """`root / name` for a folder the operator fills: the name is checked, symlinks inside `root` are followed."""
    relative = check_relative_name(name)
    if not relative.parts:
        raise UnsafePath(f"{name!r} names the folder itself, not a file in it")
    return Path(root) / relative


def check_relative_name(name: str) -> PurePosixPath:
    """The checks of `confine` that need no disk: usable when validating a workflow, before any directory is known."""
    if not isinstance(name, str) or not name.strip():
        raise UnsafePath("a file name is required")
    if "\0" in name:
        raise UnsafePath(f"{name!r}: NUL bytes are not allowed in file names")
    # Backslashes and drive letters are path syntax on Windows: refuse them everywhere so a workflow that is
    # safe here is safe there too.
    if "\\" in name or (len(name) >= 2 and name[1] == ":"):
        raise UnsafePath(f"{name!r}: use a relative name with '/' separators")
    relative = PurePosixPath(name)
    if relative.is_absolute():
        raise UnsafePath(f"{name!r}: absolute paths are not allowed, give a name relative to its folder")
    if ".." in relative.parts:
        raise UnsafePath(f"{name!r}: '..' is not allowed in file names")
    return relative


def list_files(root: Path, suffixes: tuple[str, ...], follow_links: bool = False) -> list[str]:
    """Names (relative, '/'-separated, sorted) of the files under `root` with one of `suffixes`, as `confine` (or,
    with follow_links, `path_under`) takes them.

    Hidden files and folders are skipped. Symlinks that lead outside `root` are skipped too, unless follow_links
    (model folders): then every link is followed, and only a link back into a folder being walked is not.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    inside = None if follow_links else Path(os.path.realpath(root))
    return sorted(name for name in _walk(root, inside) if PurePosixPath(name).suffix.lower() in suffixes)


def _walk(root: Path, inside: Path | None) -> Iterator[str]:
    """The relative '/'-names of the non-hidden files under `root`, following symlinked files and folders; with
    `inside`, only those whose real path is within it.

    A folder already on the way down (a link to an ancestor) is not entered again, so link loops end.
    """

    def allowed(path: str) -> str | None:
        real = os.path.realpath(path)
        return real if inside is None or Path(real).is_relative_to(inside) else None

    def visit(folder: str, prefix: str, ancestors: frozenset[str]) -> Iterator[str]:
        try:
            entries = list(os.scandir(folder))
        except OSError:  # unreadable, or vanished while we walk
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():  # follows a symlink
                    real = allowed(entry.path)
                    if real is not None and real not in ancestors:
                        yield from visit(entry.path, prefix + entry.name + "/", ancestors | {real})
                elif entry.is_file() and allowed(entry.path) is not None:  # is_file is false for a broken link
                    yield prefix + entry.name
            except OSError:
                continue

    yield from visit(str(root), "", frozenset({os.path.realpath(root)}))


def file_fingerprint(path: Path) -> list:
    """What tells a changed file from the one already loaded: resolved path (a re-pointed symlink counts as a change),
    size, modification time."""
    path = Path(path).resolve()
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]
