"""Read-only file trees addressed by relative posix paths: a folder, or a tar archive read in place.

Archives are streamed, never extracted: nothing is written next to the data (or anywhere, except the
decoded-array cache), and member names with absolute paths or ``..`` are simply ignored.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Generator, Iterator
from pathlib import Path

from drt.data.paths import digest, file_key
from drt.errors import DrtError


class FileTree:
    """Files under a root; ``files`` lists every regular file as a sorted relative posix path."""

    name: str
    files: list[str]

    def iter_bytes(self, rels: list[str]) -> Iterator[tuple[int, bytes]]:
        """Yield ``(i, contents of rels[i])`` for every requested file, in the tree's natural order."""
        raise NotImplementedError

    def key(self, rels: list[str]) -> str:
        """A cache key that changes when any of the files ``rels`` changes."""
        raise NotImplementedError

    def read(self, rel: str) -> bytes:
        """The contents of one file."""
        for _, data in self.iter_bytes([rel]):
            return data
        raise DrtError(f"{self.name}: {rel} not found")


class DirTree(FileTree):
    """The files under a folder."""

    def __init__(self, root: Path) -> None:
        self.root, self.name = root, str(root)
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            files += [f if rel_dir == "." else f"{rel_dir}/{f}" for f in filenames]
        self.files = sorted(files)

    def iter_bytes(self, rels: list[str]) -> Iterator[tuple[int, bytes]]:
        for i, rel in enumerate(rels):
            try:
                yield i, (self.root / rel).read_bytes()
            except OSError as e:
                raise DrtError(f"cannot read {self.root / rel}: {e}") from e

    def key(self, rels: list[str]) -> str:
        parts = [str(self.root.resolve())]
        for rel in rels:
            st = (self.root / rel).stat()
            parts.append(f"{rel}|{st.st_size}|{st.st_mtime_ns}")
        return digest(parts)


def _member_path(name: str) -> str | None:
    """A tar member's relative posix path, or None if it is absolute or climbs out with ``..``."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or not parts:
        return None
    return "/".join(parts)


class TarTree(FileTree):
    """The regular files inside a (possibly compressed) tar archive, read sequentially in place."""

    def __init__(self, archive: Path) -> None:
        self.archive, self.name = archive, str(archive)
        self.files = sorted(rel for rel, _, _ in self._members())

    def _members(self) -> Generator[tuple[str, tarfile.TarFile, tarfile.TarInfo], None, None]:
        """Stream (relative path, open archive, member) over the archive's safely named regular files."""
        try:
            with tarfile.open(self.archive, mode="r|*") as tar:
                for member in tar:
                    rel = _member_path(member.name) if member.isfile() else None
                    if rel is not None:
                        yield rel, tar, member
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise DrtError(f"cannot read archive {self.archive}: {e}".replace("\n", " ")) from e

    def iter_bytes(self, rels: list[str]) -> Iterator[tuple[int, bytes]]:
        wanted = {rel: i for i, rel in enumerate(rels)}
        members = self._members()
        try:
            for rel, tar, member in members:
                if (i := wanted.pop(rel, None)) is not None:
                    try:
                        data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
                        raise DrtError(f"cannot read {rel} from archive {self.archive}: {e}") from e
                    yield i, data
                    if not wanted:
                        return
        finally:
            members.close()

    def key(self, rels: list[str]) -> str:
        return digest([file_key(self.archive), *rels])
