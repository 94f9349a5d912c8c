"""User-given file names, confined to their directory.

Checkpoint names, input image names and save prefixes come from workflow files, `--set` and (later) HTTP
requests. Every one of them goes through `confine` before it touches the disk, so none can reach outside its
directory by `..`, an absolute path, a NUL byte or a symlink that points elsewhere.
"""

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


def list_files(root: Path, suffixes: tuple[str, ...]) -> list[str]:
    """Names (relative, '/'-separated, sorted) of the files under `root` with one of `suffixes`, as `confine` takes them.

    Hidden files and folders are skipped; so are symlinks that lead outside `root`.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    names = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or path.suffix.lower() not in suffixes:
            continue
        name = relative.as_posix()
        try:
            if confine(root, name).is_file():
                names.append(name)
        except UnsafePath:
            continue
    return sorted(names)


def file_fingerprint(path: Path) -> list:
    """What tells a changed file from the one already loaded: resolved path, size, modification time."""
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]
