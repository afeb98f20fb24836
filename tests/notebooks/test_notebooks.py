"""Every notebook in notebooks/ runs headless (papermill) and follows the notebook conventions.

- Each notebook runs with small parameters (only those its ``parameters`` cell
  declares) in a temporary folder, on a kernel that is this virtual
  environment's Python; any error output or failed ``assert`` fails the test.
  Notebooks 02 and 03 must draw charts (image/png outputs), 04 must show
  widgets (widget-view outputs).
- The committed notebooks carry no outputs; each has exactly one cell tagged
  ``parameters``, the first code cell, holding only ``NAME = <literal>`` lines;
  they import only walkit's public API plus the standard library, pandas,
  matplotlib, ipywidgets and pymongo (with its ``bson``), IPython's display
  helpers and numpy (pandas' own dependency).
- All notebooks together, with their default parameters, run in under 60 s.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

import walkit
from walkit.lab.story import (
    declared_parameters,
    parameters_cell,
    register,
    run_notebook,
    run_story,
    summaries,
    venv_kernel,
)

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
SMALL = {"DAYS": 3, "WRITES_PER_DAY": 50}  # passed to the notebooks that declare them
CHARTS = ("02-", "03-")
WIDGETS = ("04-",)
SUMMARIES = ("01-", "02-", "03-")  # print a WALKIT_SUMMARY line with their restore checks
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WALKIT_MODULES = {"simulate", "plots", "widgets", "sandbox"}  # public modules besides the package itself
THIRD_PARTY = {"pandas", "matplotlib", "ipywidgets", "pymongo", "bson", "IPython", "numpy"}
DEFAULT_BUDGET_S = 60.0


def ids(path: Path) -> str:
    return path.stem


@pytest.fixture(scope="module")
def kernel() -> Iterator[str]:
    with venv_kernel() as name:
        yield name


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def _mimetypes(nb: nbformat.NotebookNode) -> list[str]:
    return [mime for o in _outputs(nb) for mime in o.get("data", {})]


def test_the_kernel_is_this_python(kernel: str, tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys\nprint(sys.executable)")])
    nbformat.write(nb, tmp_path / "which.ipynb")
    run = run_notebook(tmp_path / "which.ipynb", tmp_path / "out.ipynb", kernel=kernel, cwd=tmp_path)
    assert run.ok, run.errors
    printed = _outputs(run.nb)[0]["text"].strip()
    assert Path(printed).absolute() == Path(sys.executable).absolute()


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=ids)
def test_notebook_runs(notebook: Path, kernel: str, tmp_path: Path) -> None:
    declared = declared_parameters(nbformat.read(notebook, as_version=4))
    params = {name: value for name, value in SMALL.items() if name in declared}
    run = run_notebook(notebook, tmp_path / notebook.name, params, kernel=kernel, cwd=tmp_path)
    assert run.nb is not None, run.errors
    assert run.ok, f"{notebook.name} with {params}: {run.errors}"  # run.errors includes every error output
    mimes = _mimetypes(run.nb)
    if notebook.name.startswith(CHARTS):
        assert mimes.count("image/png") >= 1, f"{notebook.name} drew no chart"
    if notebook.name.startswith(WIDGETS):
        assert WIDGET_VIEW in mimes, f"{notebook.name} shows no widget"
    found = summaries(run.nb)
    if notebook.name.startswith(SUMMARIES):
        assert found, f"{notebook.name} printed no WALKIT_SUMMARY line"
    for summary in found:
        assert summary["restore_checks"] > 0 and summary["restore_checks_passed"] == summary["restore_checks"], summary


# -- the committed notebooks --------------------------------------------------------------


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=ids)
def test_committed_without_outputs(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    nbformat.validate(nb)
    for n, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{notebook.name} cell {n} has outputs: strip them before committing"
            assert cell.execution_count is None, f"{notebook.name} cell {n} has an execution count"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=ids)
def test_parameters_cell(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{notebook.name}: {len(tagged)} cells tagged parameters, need exactly one"
    assert code and code[0] is tagged[0] and parameters_cell(nb) is tagged[0], f"{notebook.name}: the parameters cell must be the first code cell"
    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), (
            f"{notebook.name}: the parameters cell may hold only NAME = <literal> lines, not {ast.unparse(node)!r}"
        )
        ast.literal_eval(node.value)  # ValueError: not a literal
    declared = declared_parameters(nb)
    assert declared, f"{notebook.name}: the parameters cell declares nothing"
    if "MONGODB_URI" in declared:
        assert declared["MONGODB_URI"] == "", "MONGODB_URI defaults to '' ($MONGODB_URI, else the sandbox)"


def _code(cell_source: str) -> str:
    """A cell's Python: IPython magics and shell lines commented out."""
    return "\n".join("#" + line if line.lstrip().startswith(("%", "!")) else line for line in cell_source.splitlines())


def import_problems(source: str) -> list[str]:
    """What a code cell imports beyond the allowed API (empty: nothing)."""
    problems = []
    stdlib = set(sys.stdlib_module_names)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "walkit":
                    if len(parts) > 2 or (len(parts) == 2 and parts[1] not in WALKIT_MODULES):
                        problems.append(f"import {alias.name}")
                elif parts[0] not in THIRD_PARTY | stdlib:
                    problems.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            parts = module.split(".")
            if node.level:
                problems.append(f"from {'.' * node.level}{module} import ...")
            elif module == "walkit":
                problems += [f"from walkit import {a.name}" for a in node.names if a.name not in set(walkit.__all__) | WALKIT_MODULES]
            elif parts[0] == "walkit":
                if len(parts) != 2 or parts[1] not in WALKIT_MODULES:
                    problems.append(f"from {module} import ...")
            elif parts[0] not in THIRD_PARTY | stdlib:
                problems.append(f"from {module} import ...")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "walkit":
            if node.attr not in set(walkit.__all__) | WALKIT_MODULES:
                problems.append(f"walkit.{node.attr}")
    return problems


def test_import_rule_itself() -> None:
    ok = "import os, json\nimport walkit\nimport walkit.simulate\nfrom walkit import Home, Target\nfrom walkit.plots import x\nimport pandas as pd\nfrom bson import json_util\nwalkit.sandbox.Sandbox(0)"
    assert import_problems(ok) == []
    bad = "from walkit.upload import quota_dir\nfrom walkit import settings\nimport walkit.bundle\nimport requests\nwalkit.replay\nfrom . import x"
    assert len(import_problems(bad)) == 6


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=ids)
def test_imports_only_the_public_api(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    problems = []
    for n, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            problems += [f"cell {n}: {p}" for p in import_problems(_code(cell.source))]
    assert not problems, f"{notebook.name} goes beyond walkit's public API and the allowed libraries: {problems}"


# -- the whole set, default parameters ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_all_notebooks_with_defaults_under_a_minute(kernel: str, tmp_path: Path) -> None:
    assert NOTEBOOKS
    timings = {}
    started = time.monotonic()
    for notebook in NOTEBOOKS:
        run = run_notebook(notebook, tmp_path / notebook.name, kernel=kernel, cwd=tmp_path)
        timings[notebook.stem] = round(run.seconds, 1)
        assert run.ok, f"{notebook.name} (default parameters): {run.errors}"
    total = time.monotonic() - started
    print(f"\nnotebooks with default parameters: {timings}, total {total:.1f} s")
    assert total < DEFAULT_BUDGET_S, f"all notebooks together took {total:.1f} s (budget {DEFAULT_BUDGET_S:.0f} s): {timings}"


# -- make demo: walkit.story ------------------------------------------------------------------


def _notebook(path: Path, *sources: str) -> None:
    cells = [nbformat.v4.new_code_cell(src) for src in sources]
    cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)


def test_story_runs_every_notebook_saves_charts_and_sums_up(kernel: str, tmp_path: Path) -> None:
    folder = tmp_path / "nbs"
    folder.mkdir()
    summary = '{"events_captured": 7, "uploads_ok": 2, "uploads_failed": 1, "worst_offsite_rpo_hours": 30.5, "restore_checks": 3, "restore_checks_passed": 3}'
    _notebook(
        folder / "01-good.ipynb",
        "SEED = 0",
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\nplt.bar([1], [2])\nplt.show()",
        f"print('some text')\nprint('WALKIT_SUMMARY ' + {summary!r})",
    )
    _notebook(folder / "02-other.ipynb", "DAYS = 1", 'print("WALKIT_SUMMARY {\\"events_captured\\": 5, \\"worst_offsite_rpo_hours\\": 2.0}")')
    out = io.StringIO()
    assert run_story(tmp_path / "build", folder, out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert sorted(p.name for p in (tmp_path / "build").glob("*.png")) == ["01-good-1.png", "01-good-2.png"]
    assert (tmp_path / "build" / "01-good-1.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (tmp_path / "build" / "notebooks").iterdir()) == ["01-good.ipynb", "02-other.ipynb"]
    assert re.search(r"events captured\s+12\n", text), text
    assert re.search(r"uploads made / failed\s+2 / 1\n", text), text
    assert re.search(r"worst off-site RPO\s+30\.5 h\n", text), text
    assert re.search(r"restore checks passed\s+3 / 3\n", text), text

    _notebook(folder / "03-broken.ipynb", "SEED = 0", "assert 1 == 2, 'a failed check'")
    out = io.StringIO()
    assert run_story(tmp_path / "build", folder, out=out) == 1
    assert re.search(r"03-broken\.ipynb\s+FAILED", out.getvalue()) and "AssertionError: a failed check" in out.getvalue()


def test_story_command_registers() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["story", "--out", "x", "--notebooks", "y"])
    assert args.out == Path("x") and args.notebooks == Path("y") and callable(args.func)
