"""Files pvcheck reads and writes as root in folders other people share.

Every state, lock, registry, guard and results file is opened without following a symbolic
link (O_NOFOLLOW), must be a regular file (a FIFO or a device would hang the run or never
end), is read at most to its cap plus one byte, and is replaced atomically keeping the old
file's mode and owner (new files are 0644). An append never goes through a hard link. When
pvcheck runs as root, a folder or file that someone other than root can write is refused:
it could be swapped under the run (the choice over writing through a dropped privilege: one
rule, no second process, and the error says how to fix it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from pvcheck.errors import StateFileError

NEW_FILE_MODE = 0o644
_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _refuse(path: Path, problem: str) -> StateFileError:
    return StateFileError(str(path), problem)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: Path, flags: int, follow: bool = False) -> int:
    """A descriptor of the regular file at path (FileNotFoundError when absent)."""
    try:
        fd = os.open(path, flags | (_FLAGS if not follow else _FLAGS & ~os.O_NOFOLLOW), 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(path, "is a symbolic link; refused") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise _refuse(path, f"is {_kind(info.st_mode)}, not a regular file; refused")
    return fd


def read_capped(
    path: Path, cap: int, follow: bool = False, root_only: bool = False
) -> bytes | None:
    """The file's bytes (None when it does not exist), refused past `cap` bytes. With
    `root_only`, as root, a file someone else could have written is refused (checked on the
    open descriptor: it is the file that is read)."""
    try:
        fd = open_regular(path, os.O_RDONLY, follow)
    except FileNotFoundError:
        return None
    except StateFileError:
        raise
    except OSError as exc:
        raise _refuse(path, f"cannot read: {exc.strerror or exc}") from None
    why = _changeable(os.fstat(fd), sticky_ok=False) if root_only and os.geteuid() == 0 else None
    if why:
        os.close(fd)
        raise _refuse(path, f"is {why}; as root pvcheck trusts only files root alone can change")
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise _refuse(path, f"too large (more than {cap} bytes); refused")
    return data


def append(path: Path, data: bytes) -> None:
    """Append to a regular file (created 0644), never through a link of either kind."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except StateFileError:
        raise
    except OSError as exc:
        raise _refuse(path, f"cannot append: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        _refuse_unless_roots(info, path)
        if info.st_nlink > 1:
            raise _refuse(path, "has other hard links; refused")
        if info.st_size == 0:
            os.fchmod(fd, NEW_FILE_MODE)
        _write_all(fd, data)
        os.fsync(fd)
    except OSError as exc:
        raise _refuse(path, f"cannot append: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def atomic_write(path: Path, text: str, new_mode: int = NEW_FILE_MODE) -> None:
    """Write via a new temp file in the same folder, fsync, rename over the old one; the old
    file survives any error, and the new one keeps its mode and owner."""
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            old = os.lstat(path)
        except FileNotFoundError:
            old = None
        if old is not None and not stat.S_ISREG(old.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(old.st_mode) else _kind(old.st_mode)
            raise _refuse(path, f"is {kind}, not a regular file; refused")
        if old is not None:
            _refuse_unless_roots(old, path)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FLAGS, 0o600)
        try:
            _write_all(fd, text.encode("utf-8"))
            os.fchmod(fd, (old.st_mode & 0o7777) if old else new_mode)
            if old is not None and os.geteuid() == 0:
                os.fchown(fd, old.st_uid, old.st_gid)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise _refuse(path, f"cannot write: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _changeable(info: os.stat_result, sticky_ok: bool) -> str | None:
    """Why someone other than root could change what `info` describes (None: only root)."""
    if info.st_uid != 0:
        return f"owned by uid {info.st_uid}"
    sticky = stat.S_ISDIR(info.st_mode) and info.st_mode & 0o1000
    if info.st_mode & 0o002 and not (sticky_ok and sticky):
        return "writable by every user"
    if info.st_mode & 0o020 and info.st_gid != 0:
        return f"writable by group {info.st_gid}"
    return None


_MAX_LINKS = 40  # as many as the kernel follows on one path


# POSIX ACL entries (linux/posix_acl_xattr.h): a 4-byte header, then 8-byte entries of
# tag (u16), permissions (u16) and id (u32). Named users and groups can be given write
# access the mode bits never show.
_ACL_NAMED = {0x02: "user", 0x08: "group"}
_ACL_WRITE = 0x02


def _acl_grants(path: Path) -> str | None:
    """A POSIX ACL (access, or default for what is made inside) letting a named user or a
    group other than root write: why, or None."""
    for attr in ("system.posix_acl_access", "system.posix_acl_default"):
        try:
            raw = os.getxattr(path, attr, follow_symlinks=False)
        except OSError:
            continue  # no ACL there, or a file system without them
        for at in range(4, len(raw) - 7, 8):
            tag = int.from_bytes(raw[at : at + 2], "little")
            perm = int.from_bytes(raw[at + 2 : at + 4], "little")
            uid = int.from_bytes(raw[at + 4 : at + 8], "little")
            if tag in _ACL_NAMED and perm & _ACL_WRITE and uid != 0:
                return f"writable by ACL {_ACL_NAMED[tag]} {uid}"
    return None


def writable_by_others(path: Path) -> str | None:
    """Why someone other than root could change path, or swap it or a folder on the way to
    it (None when only root can). The path is followed as the kernel follows it: every folder
    walked through, those the links on the way sit in too, must be root's alone, and every link
    root's own (its target is fixed, but whoever owns it or its folder can replace it), so a
    root-owned link into a user's folder is refused. A sticky folder on the way (like /tmp) is
    fine: its other users cannot rename root's entries; the path itself may not be sticky and
    open to all, or anyone could plant files in it. A path that does not exist is checked as
    far as it does: what is made there later, only root could have made."""
    todo = list(Path(os.getcwd(), path).parts[1:])  # `..` kept: it applies after a link
    here = Path("/")  # where the walk is: a real folder, no link in it
    links = 0
    while todo:
        name = todo.pop(0)
        if name == "..":
            here = here.parent
            continue
        why = _changeable(os.lstat(here), sticky_ok=True) or _acl_grants(here)
        if why:
            return f"inside {here}, which is {why}"
        entry = here / name
        try:
            info = os.lstat(entry)
        except (FileNotFoundError, NotADirectoryError):
            # Missing: whoever may create entries in its folder could make it first; a
            # sticky folder open to all (/tmp) lets anyone do that.
            why = _changeable(os.lstat(here), sticky_ok=False)
            return f"missing, and {here} is {why}: anyone could make it first" if why else None
        if not stat.S_ISLNK(info.st_mode):
            here = entry
            continue
        if info.st_uid != 0:
            return f"reached through {entry}, a link owned by uid {info.st_uid}"
        links += 1
        if links > _MAX_LINKS:
            return f"reached through more than {_MAX_LINKS} links"
        target = Path(os.readlink(entry))
        if target.is_absolute():
            here = Path("/")
        todo[:0] = target.parts[1:] if target.is_absolute() else target.parts
    why = _changeable(os.lstat(here), sticky_ok=False) or _acl_grants(here)
    if why and here != Path(os.path.abspath(path)):
        return f"{why} (its real path is {here})"
    return why


def require_root_only_tree(
    top: Path, what: str, skip: frozenset[str] = frozenset(), max_entries: int = 20_000
) -> None:
    """As root, refuse a folder others could change or that holds anything they could: every
    file and folder below it (but the top-level names in `skip`) must be root's alone, and
    every link root's and leading inside it, never into a skipped entry. Past max_entries the
    folder is refused: the walk stays bounded."""
    if os.geteuid() != 0:
        return
    require_root_only(top, what)
    real_top = Path(os.path.realpath(top))

    def fail(exc: OSError) -> None:
        raise _refuse(Path(exc.filename or top), f"in {what}: cannot be read ({exc.strerror})")

    seen = 0
    for folder, dirs, files in os.walk(real_top, onerror=fail, followlinks=False):
        if Path(folder) == real_top:
            dirs[:] = [d for d in dirs if d not in skip]
            files = [f for f in files if f not in skip]
        for name in (*dirs, *files):
            seen += 1
            if seen > max_entries:
                raise _refuse(top, f"{what} holds more than {max_entries} entries; refused")
            entry = Path(folder, name)
            info = os.lstat(entry)
            if not stat.S_ISLNK(info.st_mode):
                why = _changeable(info, sticky_ok=False)
            elif info.st_uid != 0:
                why = f"a link owned by uid {info.st_uid}"
            else:  # its target is checked where it is, so it must be in what is walked
                target = Path(os.path.realpath(entry))
                inside = target.is_relative_to(real_top)
                first = target.relative_to(real_top).parts[:1] if inside else ()
                outside = not inside or (first and first[0] in skip)
                why = f"a link leading to {target}, outside what is checked" if outside else None
            if why:
                raise _refuse(
                    entry,
                    f"is {why}: as root pvcheck uses {what} only when everything in it is "
                    "root's alone (chown -R root and chmod -R go-w it)",
                )


def _refuse_unless_roots(info: os.stat_result, path: Path) -> None:
    """As root, an existing file pvcheck writes must be root's alone (append checks it on
    the open descriptor, so it is the file that is written)."""
    if os.geteuid() == 0:
        why = _changeable(info, sticky_ok=False)
        if why:
            raise _refuse(path, f"is {why}; as root pvcheck writes only files root alone owns")


def _write_all(fd: int, data: bytes) -> None:
    """Unbuffered: a failing write is reported where it happens, never again at close."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def require_root_only(path: Path, what: str) -> None:
    """When running as root, refuse a file or folder others can write (StateFileError)."""
    if os.geteuid() != 0:
        return
    why = writable_by_others(path)
    if why:
        raise _refuse(
            path,
            f"{what} is {why}: as root pvcheck uses only what root alone can change "
            "(chown root and chmod go-w it, or run pvcheck as its owner)",
        )
