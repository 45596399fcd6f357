"""The device runtime installs and runs without torch, transformers, optimum or nncf.

Three proofs:
1. the runtime's dependency closure (edgebridge without extras, walked through the installed
   distributions' metadata) holds none of the host-only packages;
2. no module of the runtime imports them, anywhere (AST scan);
3. ``edgebridge run`` and the Python API produce an answer in a fresh interpreter where importing
   any of them raises ``ImportError``.
"""

from __future__ import annotations

import ast
import json
import re
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import PROMPT, ROOT, run_cli, run_isolated

HOST_ONLY = {"torch", "transformers", "optimum", "optimum-intel", "optimum-onnx", "nncf", "torchvision",
             "accelerate", "onnx", "onnxscript"}
HOST_ONLY_MODULES = {"torch", "transformers", "optimum", "nncf", "torchvision", "accelerate", "onnx", "onnxscript"}

BLOCKER = '''
import sys
class _HostOnlyBlocker:
    """Make host-only packages unimportable, as on a device that never installed them."""
    blocked = {blocked!r}
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.blocked:
            raise ImportError(f"{{name}} is not installed on this device (torch-free test)")
        return None
sys.meta_path.insert(0, _HostOnlyBlocker())
'''


def _requirement_name(req: str) -> tuple[str, str]:
    """('name', marker) of a Requires-Dist line."""
    name = re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0].lower().replace("_", "-")
    marker = req.split(";", 1)[1] if ";" in req else ""
    return name, marker


def _runtime_closure() -> set[str]:
    seen: set[str] = set()
    todo = ["edgebridge"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for req in requires:
            dep, marker = _requirement_name(req)
            if "extra" in marker:  # optional extras are not part of a plain install
                continue
            todo.append(dep)
    return seen


def test_runtime_dependency_closure_has_no_host_only_packages():
    closure = _runtime_closure()
    assert {"onnxruntime", "openvino", "llama-cpp-python", "gguf", "numpy"} <= closure
    assert not closure & HOST_ONLY, sorted(closure & HOST_ONLY)


def _runtime_sources() -> list[Path]:
    files = list((ROOT / "runtimes").rglob("*.py"))
    files += [p for p in (ROOT / "edgebridge").rglob("*.py") if "testing" not in p.parts]
    return files


def test_no_runtime_module_imports_host_only_packages():
    offenders = []
    for path in _runtime_sources():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in HOST_ONLY_MODULES:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not offenders, offenders


@pytest.fixture(scope="module")
def blocker_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("torchfree")
    (folder / "sitecustomize.py").write_text(BLOCKER.format(blocked=sorted(HOST_ONLY_MODULES)))
    return folder


def _env(blocker_dir: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(blocker_dir)}


def test_blocker_really_blocks(blocker_dir):
    proc = run_isolated("import torch", env=_env(blocker_dir))
    assert proc.returncode != 0 and "torch-free test" in proc.stderr


@pytest.mark.slow
def test_cli_run_and_inspect_without_torch(clip_llama_f16, blocker_dir, tmp_path, photo):
    from PIL import Image

    image = tmp_path / "cat.png"
    Image.fromarray(photo).save(image)
    for backend in ("onnxruntime", "openvino"):
        proc = run_cli("run", str(clip_llama_f16.bundle), "--image", str(image), "-p", PROMPT, "-n", "8",
                       "--backend", backend, "--json", env=_env(blocker_dir))
        assert proc.returncode == 0, proc.stderr[-3000:]
        payload = json.loads(proc.stdout)
        assert len(payload["token_ids"]) == 8 and payload["timings"]["ttft_ms"] > 0
    proc = run_cli("inspect", str(clip_llama_f16.bundle), env=_env(blocker_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_python_api_without_torch(clip_llama_f16, blocker_dir):
    code = (
        "import sys, numpy as np\n"
        "from skimage import data\n"
        "from edgebridge import Pipeline\n"
        "pipe = Pipeline.from_bundle(sys.argv[1])\n"
        "r = pipe.generate('<image>\\nWhat is this?', images=[data.chelsea()], max_new_tokens=5)\n"
        "print(len(r.token_ids), sorted(sys.modules.keys() & {'torch', 'transformers', 'optimum', 'nncf'}))\n"
    )
    proc = run_isolated(code, str(clip_llama_f16.bundle), env=_env(blocker_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "5 []"
