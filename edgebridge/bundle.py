"""Bundle folders: open and verify one, or write one atomically.

A bundle is a folder with ``edgebridge.json`` and the files it lists. ``Bundle.open`` checks
every file against its recorded sha256 and size before any engine sees it. ``BundleWriter``
writes into a temporary sibling folder and swaps it into place at the end, so an existing
bundle is either fully replaced (``force=True``) or left exactly as it was.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Sequence

from edgebridge import swap
from edgebridge.errors import BundleError, BundleExistsError, IntegrityError, ManifestError
from edgebridge.manifest import MANIFEST_NAME, FileEntry, Manifest, read_manifest

_CHUNK = 4 * 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_relpath(rel: str) -> PurePosixPath:
    """A manifest path must stay inside the bundle: no absolute paths, no '..'."""
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ManifestError(f"manifest lists the file path '{rel}', which points outside the bundle.")
    return p


def bundle_file(root: Path, rel: str) -> Path:
    """The bundle file ``rel`` under ``root``; a path, link (or linked folder on its way) leading outside
    the bundle is refused, without a word about what is outside."""
    path = Path(root) / _safe_relpath(rel)
    try:
        inside = path.resolve().is_relative_to(Path(root).resolve())
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if not inside:
        raise IntegrityError(f"bundle file '{rel}' is a link that leads outside the bundle.",
                             hint="Copy the real files into the bundle folder (cp -L), or re-export it.")
    return path


@dataclass
class Bundle:
    """An opened bundle: its folder and its validated manifest."""

    root: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = True) -> "Bundle":
        """Read the manifest; with ``verify`` check every file's size and sha256.

        Raises ``ManifestError`` for a bad manifest and ``IntegrityError`` for a missing or
        tampered file, naming the file.
        """
        root = Path(path)
        manifest = read_manifest(root)
        bundle = cls(root=root, manifest=manifest)
        for rel in manifest.files:
            _safe_relpath(rel)
        if verify:
            bundle.verify()
        return bundle

    def path(self, rel: str) -> Path:
        return bundle_file(self.root, rel)

    def verify(self) -> dict[str, str]:
        """Check every listed file; returns {file: "ok"}, raises on the first mismatch."""
        report: dict[str, str] = {}
        for rel, entry in self.manifest.files.items():
            report[rel] = self.verify_file(rel, entry)
        return report

    def verify_file(self, rel: str, entry: FileEntry) -> str:
        path = self.path(rel)
        if not path.is_file():
            raise IntegrityError(
                f"bundle file '{rel}' is missing from {self.root}.",
                hint="The bundle is incomplete; re-export it or copy the whole folder again.",
            )
        size = path.stat().st_size
        if size != entry.bytes:
            raise IntegrityError(
                f"bundle file '{rel}' has {size} bytes, the manifest records {entry.bytes}.",
                hint="The file was truncated or replaced; re-export the bundle or copy it again.",
            )
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise IntegrityError(
                f"bundle file '{rel}' does not match its sha256 (got {digest[:12]}..., "
                f"manifest {entry.sha256[:12]}...).",
                hint="The file was modified after export; re-export the bundle or copy it again.",
            )
        return "ok"


class BundleWriter:
    """Write a bundle into a temporary sibling folder; ``commit`` swaps it into place.

    Use as a context manager: leaving the block with an exception removes the temporary folder
    and leaves any existing bundle untouched.
    """

    def __init__(self, target: str | os.PathLike, *, force: bool = False,
                 protect: Sequence[str | os.PathLike] = ()) -> None:
        """``protect``: the export's inputs (the model folder, a GGUF): the target may not be, hold, or lie
        inside any of them. ``force`` replaces an existing edgebridge bundle, never another folder."""
        self.target = Path(target).absolute()
        self.force = force
        _refuse_overlap(self.target, protect)
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.recovered = swap.recover(self.target)
            _check_replaceable(self.target, force)
            self.tmp = swap.work_dir(self.target)
        except OSError as exc:
            raise BundleError(f"cannot write beside '{self.target}' ({exc.strerror or exc}).",
                              hint="Choose an output folder in a writable place with free space.") from None
        self.committed = False

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, rel: str) -> Path:
        p = self.tmp / _safe_relpath(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def commit(self, manifest: Manifest) -> Path:
        """Hash every file, write the manifest, and move the folder into place."""
        manifest.files = {}
        for path in sorted(p for p in self.tmp.rglob("*") if p.is_file()):
            rel = path.relative_to(self.tmp).as_posix()
            if rel == MANIFEST_NAME:
                continue
            manifest.files[rel] = FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)
        manifest.created_utc = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        # round-trip through the parser: a writer that checks its own output
        Manifest.from_dict(manifest.to_dict())
        (self.tmp / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        _plain_permissions(self.tmp)
        swap.fault("commit")
        self._swap_into_place()
        self.committed = True
        return self.target

    def _swap_into_place(self) -> None:
        _check_replaceable(self.target, self.force)  # again: another export may have written it meanwhile
        swap.swap_in(self.tmp, self.target, replace=self.force)


def _plain_permissions(root: Path) -> None:
    """The permissions any folder and file the user makes gets (their umask): the work folder comes from
    ``mkdtemp`` (0700) and onnx writes external weights 0600, which left a bundle unreadable to, say, a
    server running under another account."""
    mask = os.umask(0o022)
    os.umask(mask)
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _refuse_overlap(target: Path, protect: Sequence[str | os.PathLike]) -> None:
    resolved = target.resolve()
    for source in (Path(p).resolve() for p in protect if p is not None):
        if resolved == source or resolved.is_relative_to(source) or source.is_relative_to(resolved):
            raise BundleError(f"the output folder '{target}' overlaps the export's input '{source}'.",
                              hint="Write the bundle to a folder outside the model folder (and not around it).")


def _check_replaceable(target: Path, force: bool) -> None:
    if not os.path.lexists(target):
        return
    if not force:
        raise BundleExistsError(f"'{target}' already exists.",
                                hint="Pass --force (force=True) to replace it, or choose another output folder.")
    if not target.is_dir() or target.is_symlink():
        raise BundleError(f"'{target}' exists and is not a folder; refusing to replace it.")
    if not (target / MANIFEST_NAME).is_file() and any(target.iterdir()):
        raise BundleError(f"'{target}' is a folder with files in it, not an edgebridge bundle; --force replaces "
                          "only bundles.", hint="Choose another output folder, or empty this one yourself.")
