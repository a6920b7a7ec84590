"""The package's shape, kept by CI: the import contracts of ``.importlinter``
(layers run one way, ``modules/`` imports nothing of the package), no import of
the package hidden inside a function, and no file over 400 lines."""

import ast
import sys
from pathlib import Path
from cli import run_cli  # tests/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "espnet_lowrank"
MAX_LINES = 400


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = run_cli([lint, "--no-cache"], cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout, proc.stdout[-2000:]


def _function_level_imports(path: Path):
    tree = ast.parse(path.read_text())
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("espnet_lowrank"):
                    yield f"{path.relative_to(ROOT)}:{node.lineno} from {node.module}"


def test_no_package_import_hides_inside_a_function():
    """A function-level import of the package would hide a cycle from the contracts."""
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _function_level_imports(path)]
    assert not found, found


def test_no_file_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
