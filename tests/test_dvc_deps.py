"""dvc.yaml's code deps cover what each stage really imports (design.md section 2: "each stage
lists exactly the params and code it depends on"), and its params keys exist in params.yaml.

A stage's code is the static import closure (``ast``; imports inside functions included,
``if TYPE_CHECKING:`` blocks skipped) of the flow module that flows/stages.py names for its
``python -m flows <stage>`` command, plus modules named in strings ("tasks.attack:attack_shard" for shard
workers, "tasks.ddp_finetune" for torchrun). The CLI module itself and the top-level package
``__init__`` files (docstrings, a version, offline env defaults) are generic and exempt.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import yaml

from tests.conftest import REPO

ROOTS = {"flows": REPO / "flows", "tasks": REPO / "tasks", "ops": REPO / "ops", "udcguard": REPO / "src" / "udcguard"}
EXEMPT = {"flows/__main__.py", "flows/__init__.py", "tasks/__init__.py", "ops/__init__.py", "src/udcguard/__init__.py"}
TABLE = REPO / "flows" / "stages.py"  # names every stage's flow in a string: each stage's own comes from cli_imports
MODULE_STRING = re.compile(r"((?:flows|tasks|ops|udcguard)(?:\.\w+)+)(?::\w+)?")


def module_file(name: str) -> Path | None:
    """The repo file of a dotted module name (``udcguard.io.atomic`` -> src/udcguard/io/atomic.py)."""
    top, *rest = name.split(".")
    if top not in ROOTS:
        return None
    base = ROOTS[top].joinpath(*rest)
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _package(path: Path) -> str:
    top = next(k for k, root in ROOTS.items() if path.is_relative_to(root))
    parts = [top, *path.relative_to(ROOTS[top]).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts[:-1])


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _executed(tree: ast.AST):
    """Every node except the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


@cache
def direct_imports(path: Path) -> frozenset[str]:
    """Dotted repo-local module names that ``path`` imports (or names as a string)."""
    out: set[str] = set()
    for node in _executed(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {n for a in node.names for n in _with_parents(a.name)}
        elif isinstance(node, ast.ImportFrom):
            pkg = _package(path).split(".")
            base = node.module or ""
            if node.level:
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            out |= set(_with_parents(base)) | {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and path != TABLE:
            m = MODULE_STRING.fullmatch(node.value)
            if m:
                out |= set(_with_parents(m.group(1)))
    return frozenset(n for n in out if module_file(n) is not None)


def closure(start: set[str]) -> set[str]:
    """Repo-relative files of the modules ``start`` imports, transitively (themselves included)."""
    seen: set[Path] = set()
    todo = [f for n in start for p in _with_parents(n) if (f := module_file(p))]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo += [module_file(n) for n in direct_imports(f)]
    return {str(f.relative_to(REPO)) for f in seen} - EXEMPT


def cli_imports() -> dict[str, set[str]]:
    """Stage command name -> the repo modules it imports: its flow's module (flows/stages.py, the table the
    CLI registers its stage commands from), the table itself and ``_run``'s imports."""
    from flows.stages import STAGES

    tree = ast.parse((REPO / "flows" / "__main__.py").read_text())
    run = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "_run")
    run_imports = {n.module for n in ast.walk(run) if isinstance(n, ast.ImportFrom) and n.module and module_file(n.module)}
    return {s.name: {s.flow.split(":")[0], "flows.stages"} | run_imports for s in STAGES}


def dvc_stages() -> dict[str, dict]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: s.get("do", s) for name, s in stages.items()}


def covered(file: str, deps: list[str]) -> bool:
    return any(file == d or file.startswith(d.rstrip("/") + "/") for d in deps)


def test_closure_follows_imports_and_strings() -> None:
    files = closure({"flows.train"})
    assert {"flows/train.py", "tasks/train.py", "ops/launch.py", "src/udcguard/io/atomic.py",
            "src/udcguard/attacks/pgd.py"} <= files  # config/ imports the registries to check params
    assert "tasks.ddp_finetune" in direct_imports(REPO / "tasks" / "train.py")  # named as a string for torchrun
    assert "tasks/ddp_finetune.py" in files and not EXEMPT & files
    tracking = REPO / "ops" / "tracking.py"
    assert "udcguard.config" in direct_imports(tracking)  # imported inside a function
    assert "import udcguard.config" not in tracking.read_text()  # ... and under TYPE_CHECKING (skipped)
    assert covered("src/udcguard/io/atomic.py", ["src/udcguard/io"])
    assert not covered("src/udcguard/iox.py", ["src/udcguard/io"])


def test_every_stage_lists_the_code_it_imports() -> None:
    cli = cli_imports()
    missing = []
    for name, stage in dvc_stages().items():
        cmd = stage["cmd"].split()
        assert cmd[:3] == ["python", "-m", "flows"] and cmd[3] in cli, f"{name}: {stage['cmd']}"
        missing += [(name, f) for f in sorted(closure(cli[cmd[3]])) if not covered(f, stage["deps"])]
    assert not missing, "dvc.yaml deps miss imported code:\n" + "\n".join(f"  {s}: {f}" for s, f in missing)


def test_listed_params_keys_exist_in_params_yaml() -> None:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    bad = []
    for name, stage in dvc_stages().items():
        for key in stage.get("params", []):
            node = data
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    bad.append((name, key))
                    break
                node = node[part]
    assert not bad, f"params keys of dvc.yaml not in params.yaml: {bad}"
