"""One-way rooms: stages import library modules only, and each DVC stage's code deps are its import closure.

A stage (`python -m pipeline.<stage>`) that imports another stage drags that stage's code into its DVC deps, so
editing the training loop would invalidate every frame cache. The closure is read from the source (every
``import`` / ``from ... import`` of ``pipeline`` and ``models``, function-level ones included, plus the dataset
modules `pipeline.datasets.get_spec` loads by name, for a module that imports it), so it is what could run,
not what a test happened to run.

When dvc.yaml drifts, `python -m tests.test_rooms --write` rewrites every stage's code deps from the closure.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: Every stage module; dvc.yaml runs all of these but show, download, study and tune.
STAGES = ("generate", "ingest", "ingest_images", "bin", "train", "evaluate", "export", "report", "study", "tune", "show",
          "download")
PACKAGES = ("pipeline", "models")


def _file(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _dataset_modules() -> list[str]:
    """The modules `get_spec` imports by name (``pipeline.datasets.MODULES``), read from the source."""
    tree = ast.parse((ROOT / "pipeline/datasets/__init__.py").read_text())
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "MODULES" for t in targets):
            return [v.value for v in node.value.values]
    raise AssertionError("pipeline/datasets/__init__.py defines no MODULES registry")


def imports(module: str) -> set[str]:
    """The project modules ``module`` imports anywhere in its source (names that are modules, not attributes)."""
    path = _file(module)
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] in PACKAGES and _file(name) is not None:
                out.add(name)
            if name == "pipeline.datasets.get_spec":  # it imports the dataset modules by name
                out.update(_dataset_modules())
    return out


def closure(module: str) -> set[str]:
    """``module`` and every project module it imports, transitively (parent packages included)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen or _file(m) is None:
            continue
        seen.add(m)
        parts = m.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(imports(m))
    return seen


def code_deps(stage: str) -> list[str]:
    """The files DVC should hash for ``stage``: its closure (packages' __init__ files too: they run first)."""
    return sorted(str(_file(m).relative_to(ROOT)) for m in closure(f"pipeline.{stage}"))


def _dvc_stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: body.get("do", body) for name, body in stages.items()}


def test_stages_never_import_another_stage():
    for stage in STAGES:
        others = {f"pipeline.{s}" for s in STAGES} - {f"pipeline.{stage}"}
        bad = sorted(imports(f"pipeline.{stage}") & others)
        assert not bad, f"pipeline/{stage}.py imports the stage(s) {bad}: move the shared piece into a library module"


def test_library_modules_never_import_a_stage():
    stages = {f"pipeline.{s}" for s in STAGES}
    for path in sorted((ROOT / "pipeline").rglob("*.py")) + sorted((ROOT / "models").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if module in stages:
            continue
        bad = sorted(imports(module) & stages)
        assert not bad, f"{path.relative_to(ROOT)} (a library module) imports the stage(s) {bad}"


def test_dvc_deps_are_each_stages_import_closure():
    """An unrelated edit never reruns a stage, and a related one always does."""
    for name, body in _dvc_stages().items():
        module = body["cmd"].split("-m pipeline.")[1].split()[0]
        listed = sorted(d for d in body["deps"] if str(d).endswith(".py"))
        want = code_deps(module)
        missing, extra = sorted(set(want) - set(listed)), sorted(set(listed) - set(want))
        assert not (missing or extra), (f"dvc.yaml stage {name!r} (pipeline.{module}): add {missing}, remove {extra} "
                                        "(python -m tests.test_rooms --write rewrites them)")


def test_editing_the_training_loop_leaves_ingest_and_bin_alone():
    """The issue's own check: train.py is in neither ingest's nor bin's deps; binning.py is in bin's and train's."""
    assert "pipeline/train.py" not in code_deps("ingest") and "pipeline/train.py" not in code_deps("bin")
    assert "pipeline/binning.py" in code_deps("bin") and "pipeline/binning.py" in code_deps("train")


def _write() -> None:
    from ruamel.yaml import YAML  # DVC's own YAML library (the dev extra): keeps dvc.yaml's comments and layout

    y = YAML()
    y.preserve_quotes = True
    y.width = 200
    y.indent(mapping=2, sequence=4, offset=2)
    doc = y.load(ROOT / "dvc.yaml")
    for body in doc["stages"].values():
        body = body.get("do", body)
        module = body["cmd"].split("-m pipeline.")[1].split()[0]
        data = [d for d in body["deps"] if not str(d).endswith(".py")]
        body["deps"].clear()
        body["deps"].extend(data + code_deps(module))
    y.dump(doc, ROOT / "dvc.yaml")


if __name__ == "__main__":
    if "--write" in sys.argv:
        _write()
        print("dvc.yaml: code deps rewritten from the import closures")
