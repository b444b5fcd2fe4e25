"""The arrows between packages (docs/architecture.md), read from every import statement:

* axon.spec (the rules both sides share) imports neither torch, perfmodel, nor the rest of axon;
* perfmodel imports axon.spec only from axon, and torch only in perfmodel/calibrate/;
* among the engine's packages only axon/planning/ imports perfmodel;
* axon.kernels knows nothing of the rest of axon; the engine never imports axon.testing.

Imports inside functions count too. A subprocess then imports every torch-free module and
checks that torch was not loaded after all (a transitive import the text check cannot see).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def module_name(path: Path, root: Path = REPO) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, root: Path = REPO) -> set[str]:
    """Every module an import statement in `path` names (relative imports resolved)."""
    names = set()
    own = module_name(path, root)
    package = own if path.name == "__init__.py" else own.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def modules(folder: str, root: Path = REPO) -> list[Path]:
    return sorted((root / folder).rglob("*.py"))


def reaches(names: set[str], package: str) -> set[str]:
    return {n for n in names if n == package or n.startswith(package + ".")}


def offenders(folder: str, allowed, forbidden: str, root: Path = REPO) -> dict[str, set[str]]:
    found = {}
    for path in modules(folder, root):
        rel = str(path.relative_to(root))
        if allowed(rel):
            continue
        bad = reaches(imported(path, root), forbidden)
        if bad:
            found[rel] = bad
    return found


def test_the_shared_rules_import_no_torch_no_perfmodel_and_no_other_axon_package():
    for forbidden in ("torch", "perfmodel", "numpy"):
        assert offenders("axon/spec", lambda rel: False, forbidden) == {}, forbidden
    outside = {rel: {n for n in names if not n.startswith("axon.spec")}
               for rel, names in offenders("axon/spec", lambda rel: False, "axon").items()}
    assert {rel: names for rel, names in outside.items() if names} == {}


def test_perfmodel_imports_torch_only_in_calibrate_and_axon_only_through_spec():
    assert offenders("perfmodel", lambda rel: rel.startswith("perfmodel/calibrate/"), "torch") == {}
    axon_imports = offenders("perfmodel", lambda rel: rel.startswith("perfmodel/calibrate/"), "axon")
    beyond_spec = {rel: {n for n in names if n != "axon" and not n.startswith("axon.spec")}
                   for rel, names in axon_imports.items()}
    assert {rel: names for rel, names in beyond_spec.items() if names} == {}


def test_only_planning_imports_perfmodel():
    assert offenders("axon", lambda rel: rel.startswith("axon/planning/"), "perfmodel") == {}


def test_kernels_know_nothing_of_the_engine_and_the_engine_never_imports_testing():
    inside = {rel: {n for n in names if n != "axon" and not n.startswith("axon.kernels")}
              for rel, names in offenders("axon/kernels", lambda rel: False, "axon").items()}
    assert {rel: names for rel, names in inside.items() if names} == {}
    assert offenders("axon", lambda rel: rel.startswith("axon/testing/"), "axon.testing") == {}


def test_the_checker_sees_an_import_inside_a_function(tmp_path):
    """The rules above are only as good as `imported`: it must see a function-level import."""
    (tmp_path / "axon" / "spec").mkdir(parents=True)
    probe = tmp_path / "axon" / "spec" / "probe.py"
    probe.write_text("def f():\n    from perfmodel.predict import predict\n    import torch.nn\n    from . import layout\n")
    assert {"perfmodel.predict", "torch.nn", "axon.spec.layout"} <= imported(probe, tmp_path)
    assert offenders("axon/spec", lambda rel: False, "torch", tmp_path) == {"axon/spec/probe.py": {"torch.nn"}}


@pytest.mark.timeout(120)
def test_importing_every_torch_free_module_loads_no_torch():
    names = [module_name(p) for folder in ("axon/spec", "perfmodel") for p in modules(folder)
             if "calibrate" not in p.parts and p.name != "__main__.py"]
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert len(names) >= 20  # every module was imported, not an empty list


def test_tests_share_helpers_through_the_package_not_through_each_other():
    """What tests share lives in axon.testing: no test imports a module under tests/ or benchmarks/."""
    local = {p.stem for p in modules("tests")} | {"benchmarks", "tests"}
    found = {}
    for path in modules("tests"):
        bad = {n for n in imported(path) if n.split(".")[0] in local}
        if bad:
            found[str(path.relative_to(REPO))] = bad
    assert found == {}
    assert "conftest" in local and "test_import_direction" in local  # the check knows the tests' own names
