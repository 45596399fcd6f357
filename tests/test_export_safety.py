"""Exports never destroy data (hardening class 3): the source and any earlier bundle always survive.

Kills use the fault points of ``edgebridge/swap.py`` (``EDGEBRIDGE_FAULT``) in a separate process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgebridge.bundle import Bundle
from edgebridge.errors import BundleError, BundleExistsError
from edgebridge.exporters.api import export_bundle
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slow

EXPORT = "import sys\nfrom edgebridge.exporters.api import export_bundle\n" \
         "export_bundle(sys.argv[1], sys.argv[2], encoder_formats=['onnx'], llm_dtype='f32', force='--force' in sys.argv)\n"


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.glob(f".{target.name}.*"))


def export_in_process(model: Path, target: Path, *flags: str, fault: str | None = None) -> subprocess.Popen:
    env = {**os.environ, **({"EDGEBRIDGE_FAULT": fault} if fault else {})}
    return subprocess.Popen([sys.executable, "-c", EXPORT, str(model), str(target), *flags], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def model(clip_llama_f32, tmp_path) -> Path:
    return Path(shutil.copytree(clip_llama_f32.model_dir, tmp_path / "model"))


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_the_output_may_not_overlap_the_source(model, tmp_path, where):
    before = tree_digest(model)
    target = {"same": model, "inside": model / "bundle", "around": tmp_path}[where]
    with pytest.raises(BundleError, match="overlaps the export's input"):
        export_bundle(model, target, force=True)
    assert tree_digest(model) == before
    proc = run_cli("export", str(model), "-o", str(model), "--force")
    assert proc.returncode == 2 and "overlaps" in proc.stderr and tree_digest(model) == before


def test_force_replaces_bundles_only(model, tmp_path, clip_llama_f32):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(BundleError, match="not an edgebridge bundle"):
        export_bundle(model, folder, force=True)
    assert (folder / "holiday.jpg").read_bytes() == b"precious" and leftovers(folder) == []
    with pytest.raises(BundleExistsError):
        export_bundle(model, folder)


def test_two_exports_racing_to_one_path_have_one_winner(model, tmp_path):
    target = tmp_path / "raced"
    procs = [export_in_process(model, target) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    assert any("BundleExistsError" in err for _, err in results)
    Bundle.open(target)  # the winner's bundle, whole and verified
    assert leftovers(target) == []


def _bundle_then_killed_export(model, tmp_path, fault: str):
    """A bundle, then a --force export over it killed (SIGKILL) at ``fault``; the bundle's digest before."""
    target = tmp_path / "bundle"
    export_bundle(model, target, encoder_formats=["onnx"], llm_dtype="f32")
    before = tree_digest(target)
    proc = export_in_process(model, target, "--force", fault=fault)
    assert proc.wait(timeout=600) == -9
    return target, before


def test_a_kill_between_the_swaps_renames_is_recovered(model, tmp_path):
    target, before = _bundle_then_killed_export(model, tmp_path, "swap")  # the old bundle aside, the new not in place
    assert not target.exists() and any(name.startswith(".bundle.old-") for name in leftovers(target))
    old = next(p for p in tmp_path.glob(".bundle.old-*"))
    assert tree_digest(old) == before  # nothing of the earlier bundle was lost
    proc = export_in_process(model, target, "--force")  # the next export puts it back, then replaces it
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    Bundle.open(target)
    assert leftovers(target) == []


def test_a_kill_before_the_swap_leaves_the_old_bundle_and_is_cleaned(model, tmp_path):
    target, before = _bundle_then_killed_export(model, tmp_path, "commit")
    assert tree_digest(target) == before and any(n.startswith(".bundle.tmp-") for n in leftovers(target))
    with pytest.raises(BundleExistsError):  # a refused export still cleans the dead export's work folder
        export_bundle(model, target)
    assert leftovers(target) == [] and tree_digest(target) == before


def test_a_bundle_gets_the_users_umask_permissions(clip_llama_f32):
    """Not the work folder's 0700 (mkdtemp) nor onnx's 0600 external weights: a bundle another account
    (a server) reads must be readable under the usual umask, like any file the user writes."""
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    root = clip_llama_f32.bundle
    assert (root / "vision_encoder.onnx.data").is_file()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}
    assert modes.pop(root.name) == 0o777 & ~mask
    assert set(modes.values()) == {0o666 & ~mask}, modes
