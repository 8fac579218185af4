"""dvc.yaml's `deps:` are exact for the library: every module of `src/emotion_circuits` that a stage script imports,
directly or through other modules (including imports inside functions), is listed, and no module it does not import
is. A dep that names a folder covers every module under it. `__init__.py` holds no code and is not required.

A stage with a missing module re-runs too rarely (stale results under a green `dvc status`); one with an extra
module re-runs too often."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "emotion_circuits"
SRC = ROOT / "src" / PACKAGE


def module_path(name: str, src: Path = SRC) -> Path | None:
    """The file of dotted module `name` relative to the package (e.g. 'probes' -> src/.../probes.py), or None."""
    parts = name.split(".") if name else []
    base = src.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if parts and candidate.exists():
            return candidate
    return None


def imported_modules(path: Path, src: Path = SRC) -> set[Path]:
    """Library files imported by the Python file `path`, anywhere in it: `import emotion_circuits.x`,
    `from emotion_circuits(.x) import y`, and relative imports inside the package (y counts when it is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = path.relative_to(src).parent.parts if path.is_relative_to(src) else None
    found: set[Path] = set()

    def add(dotted: str) -> None:
        target = module_path(dotted, src)
        if target is not None:
            found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    add(alias.name[len(PACKAGE) + 1:])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if here is None:
                    continue
                base = list(here[:len(here) - (node.level - 1)]) if node.level > 1 else list(here)
                stem = ".".join(base + ([node.module] if node.module else []))
            elif node.module == PACKAGE or (node.module or "").startswith(PACKAGE + "."):
                stem = node.module[len(PACKAGE) + 1:] if node.module != PACKAGE else ""
            else:
                continue
            add(stem)
            for alias in node.names:
                add(f"{stem}.{alias.name}" if stem else alias.name)
    found.discard(path)
    return {p for p in found if p.name != "__init__.py" or p.read_text().count("import")}


def closure(script: Path, src: Path = SRC) -> set[Path]:
    """Every library file reached from `script` by following imports."""
    seen: set[Path] = set()
    todo = list(imported_modules(script, src))
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(imported_modules(path, src) - seen)
    return seen


def stage_scripts(dvc: dict) -> dict[str, tuple[Path, list[str]]]:
    """stage name -> (its script under stages/, its deps as written)."""
    out = {}
    for name, stage in dvc["stages"].items():
        match = re.match(r"python (stages/\S+\.py)", stage["cmd"])
        if match:
            out[name] = (ROOT / match.group(1), [str(d) for d in stage.get("deps", [])])
    return out


def coverage_errors(name: str, script: Path, deps: list[str], root: Path = ROOT, src: Path = SRC) -> list[str]:
    """One line per library module `name` imports without listing it, or lists without importing it."""
    if f"{script.relative_to(root)}" not in deps:
        return [f"stage {name}: its script {script.relative_to(root)} is not among its deps"]
    prefix = f"{src.relative_to(root)}"
    listed = [d.rstrip("/") for d in deps if d.startswith(prefix)]
    needed = closure(script, src)
    errors = []
    for module in sorted(needed):
        rel = f"{module.relative_to(root)}"
        if not any(rel == d or rel.startswith(d + "/") for d in listed):
            errors.append(f"stage {name}: imports {rel} (via {script.relative_to(root)}) but its deps do not list it")
    for dep in listed:
        target = root / dep
        covered = [m for m in needed if m == target or target in m.parents]
        if not covered:
            errors.append(f"stage {name}: lists {dep} but imports nothing in it")
    return errors


def test_every_stage_lists_exactly_the_library_modules_it_imports():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    scripts = stage_scripts(dvc)
    assert len(scripts) == len(dvc["stages"]), "every stage runs a script under stages/"
    errors = [e for name, (script, deps) in scripts.items() for e in coverage_errors(name, script, deps)]
    assert not errors, "\n".join(errors)


@pytest.fixture
def toy(tmp_path):
    """A toy repository: stages/run.py imports pkg a (from inside a function), a imports b relatively, c is unused."""
    src = tmp_path / "src" / PACKAGE
    src.mkdir(parents=True)
    (src / "__init__.py").write_text('"""toy"""\n')
    (src / "a.py").write_text("from .b import thing\n")
    (src / "b.py").write_text("thing = 1\n")
    (src / "c.py").write_text("other = 2\n")
    (tmp_path / "stages").mkdir()
    script = tmp_path / "stages" / "run.py"
    script.write_text(f"def main():\n    from {PACKAGE} import a\n    return a\n")
    return tmp_path, src, script


def test_the_check_names_a_missing_module_an_extra_one_and_accepts_a_folder(toy):
    """The check can fail: a dep list without the transitively imported b names b; one with the unused c names c;
    the package folder covers everything; the script itself must be listed."""
    root, src, script = toy
    pkg = f"src/{PACKAGE}"
    assert closure(script, src) == {src / "a.py", src / "b.py"}
    missing = coverage_errors("run", script, ["stages/run.py", f"{pkg}/a.py"], root, src)
    assert missing == [f"stage run: imports {pkg}/b.py (via stages/run.py) but its deps do not list it"]
    extra = coverage_errors("run", script, ["stages/run.py", f"{pkg}/a.py", f"{pkg}/b.py", f"{pkg}/c.py"], root, src)
    assert extra == [f"stage run: lists {pkg}/c.py but imports nothing in it"]
    assert coverage_errors("run", script, ["stages/run.py", f"{pkg}/"], root, src) == []
    assert coverage_errors("run", script, [f"{pkg}/"], root, src) == [
        "stage run: its script stages/run.py is not among its deps"]
