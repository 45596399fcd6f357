"""Registries: every family has a tiny builder and an end-to-end parity test; packaging lists every package."""

from __future__ import annotations

import ast
import tomllib

from edgebridge.exporters.families import families
from edgebridge.runtimes.registry import encoder_backends
from edgebridge.testing import BUILDERS
from tests.conftest import ROOT


def _families_with_parity_tests() -> set[str]:
    covered: set[str] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "COVERS_FAMILIES" for t in node.targets):
                covered |= set(ast.literal_eval(node.value))
    return covered


def test_every_registered_family_has_an_end_to_end_parity_test():
    missing = set(families()) - _families_with_parity_tests()
    assert not missing, f"families without an end-to-end parity test: {sorted(missing)}"


def test_every_registered_family_has_an_offline_input_builder():
    from edgebridge.exporters.importers.assemble import ASSEMBLERS

    builders = {"tiny": set(BUILDERS), "assembled": set(ASSEMBLERS)}
    for name, fam in families().items():
        assert fam.input_source in builders, f"{name}: input_source must be one of {sorted(builders)}"
        assert name in builders[fam.input_source], f"{name} has no {fam.input_source!r} input builder"


def test_family_metadata_is_complete():
    for name, fam in families().items():
        assert fam.model_types and fam.bridge_type and fam.description, name
        assert fam.survey_group in {"converter", "perceiver", "tool"}, name


def test_encoder_backends_are_discovered():
    assert encoder_backends() == {"onnxruntime": "onnx", "openvino": "openvino"}


def test_pyproject_lists_every_package_folder():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {"edgebridge": ROOT / "edgebridge", "edgebridge.exporters": ROOT / "exporters",
             "edgebridge.runtimes": ROOT / "runtimes"}
    assert config["package-dir"] == {k: v.name for k, v in roots.items()}
    expected = set()
    for prefix, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            if prefix == "edgebridge" and rel[:1] in (("exporters",), ("runtimes",)):
                continue
            expected.add(".".join((prefix, *rel)))
    assert set(config["packages"]) == expected


def test_the_formats_table_names_the_backend_that_registered_each_format():
    from edgebridge.formats import FORMATS

    for backend, fmt in encoder_backends().items():
        assert FORMATS[fmt].backend == backend
