"""Import boundaries: registry, plan, results and report code (with every plug-in declaration) imports neither torch
nor Ray, so `harness list`, `--dry-run` and leaderboard regeneration stay instant (and the sweep's driver finds
earlier checkpoints without torch); only the sweep imports Ray."""

import ast
import subprocess
import sys
from pathlib import Path

HARNESS = Path(__file__).resolve().parent.parent / "harness"
TORCH_FREE = ("registry", "run/plan.py", "run/checkpoints.py", "results", "report", "heads/kinds", "heads/spec.py",
              "models/families", "data/sources", "tokens/space.py", "plugins.py", "config.py")


def _modules(parts: tuple[str, ...]) -> list[str]:
    """Every module under those files and folders of harness/, as dotted names."""
    files = [p for part in parts for p in ([HARNESS / part] if part.endswith(".py") else (HARNESS / part).rglob("*.py"))]
    return sorted(".".join(("harness", *p.relative_to(HARNESS).with_suffix("").parts)).removesuffix(".__init__")
                  for p in files)


def test_registry_plan_results_and_report_import_neither_torch_nor_ray():
    modules = _modules(TORCH_FREE)
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "from harness.registry import load_registry\nload_registry()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert len(modules) > 20 and out.strip() == "[]"


def test_only_the_sweep_imports_ray():
    importers = set()
    for path in HARNESS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] == "ray" for n in names):
                importers.add(path.relative_to(HARNESS).as_posix())
    assert importers == {"run/sweep.py"}


def test_a_fresh_install_reads_the_registry_without_importing_timm(tmp_path):
    """With no timm-configuration cache yet (a fresh machine), the built-in timm entries' facts ship with the
    registry, so the first `harness list` imports neither timm nor torch."""
    import os

    code = ("import sys\nfrom harness.registry import load_registry\nload_registry()\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'timm', 'ray'}))")
    env = {**os.environ, "HARNESS_TIMM_CONFIGS": str(tmp_path / "empty")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "[]"
