"""``make demo`` / ``walkit story``: the whole story, headless.

Every notebook in ``notebooks/`` is executed by papermill with its default
parameters into ``OUT/notebooks/``; every chart (``image/png`` output) is
saved as ``OUT/<notebook>-<n>.png``; and a short summary is printed from the
``WALKIT_SUMMARY`` lines the notebooks print.

The summary line, one per notebook run (at most one is read per notebook: the
last), is printed on stdout by a code cell::

    WALKIT_SUMMARY {"events_captured": 1234, "uploads_ok": 29, ...}

``WALKIT_SUMMARY``, one space, then a JSON object on the same line.  Keys read
(all optional; missing ones count as 0 / not reported): ``events_captured`` (every
change event: document changes and schema events such as a collection's ``create``),
``changes_captured`` (document changes only: insert, update, replace, delete),
``uploads_ok``, ``uploads_failed``, ``second_calls_refused`` (ints, summed),
``worst_offsite_rpo_hours`` (float, the maximum is shown), ``restore_checks``
and ``restore_checks_passed`` (ints, summed).  ``walkit.lab.simulate``'s
``SimulationResult.summary`` has exactly these names, so a notebook prints
``print(f"WALKIT_SUMMARY {json.dumps(res.summary, default=str)}")`` (one string: one write).

Notebooks find MongoDB by one rule: the ``MONGODB_URI`` parameter, else
``$MONGODB_URI``, else they start the embedded sandbox themselves.

The exit code is 0 only if every notebook ran without an error and every
restore check reported passed.
"""

from __future__ import annotations

import argparse
import ast
import base64
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "SUMMARY_TAG",
    "KERNEL",
    "NotebookRun",
    "run_story",
    "run_notebook",
    "find_notebooks",
    "declared_parameters",
    "parameters_cell",
    "error_outputs",
    "png_outputs",
    "summaries",
    "venv_kernel",
    "register",
    "main",
]

SUMMARY_TAG = "WALKIT_SUMMARY"
KERNEL = "python3"
_REPO_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


# -- reading notebooks --------------------------------------------------------------------


def find_notebooks(folder: str | os.PathLike[str] | None = None) -> list[Path]:
    """The notebooks in ``folder`` (default: ./notebooks, else the checkout's), in name order."""
    if folder is None:
        folder = Path("notebooks") if Path("notebooks").is_dir() else _REPO_NOTEBOOKS
    return sorted(p for p in Path(folder).glob("*.ipynb") if not p.name.startswith("."))


def _source(cell: Any) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def parameters_cell(nb: Any) -> Any | None:
    """The (first) code cell tagged ``parameters``, or None."""
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    return None


def declared_parameters(nb: Any) -> dict[str, Any]:
    """``{NAME: value}`` of the parameters cell's ``NAME = <literal>`` lines (ValueError for anything else)."""
    cell = parameters_cell(nb)
    if cell is None:
        return {}
    out: dict[str, Any] = {}
    for node in ast.parse(_source(cell)).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"the parameters cell may hold only NAME = <literal> lines; line {node.lineno} is not one")
        try:
            out[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise ValueError(f"the parameters cell may hold only literals; {node.targets[0].id} (line {node.lineno}) is not one") from None
    return out


def _outputs(nb: Any) -> Iterator[dict[str, Any]]:
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code":
            yield from cell.get("outputs", [])


def error_outputs(nb: Any) -> list[str]:
    """``"ename: evalue"`` of every error output."""
    return [f"{o.get('ename')}: {o.get('evalue')}" for o in _outputs(nb) if o.get("output_type") == "error"]


def png_outputs(nb: Any) -> list[bytes]:
    """Every ``image/png`` output, decoded, in order."""
    out = []
    for o in _outputs(nb):
        data = o.get("data", {}).get("image/png")
        if data:
            out.append(base64.b64decode("".join(data) if isinstance(data, list) else data))
    return out


def summaries(nb: Any) -> list[dict[str, Any]]:
    """The JSON objects of the ``WALKIT_SUMMARY {...}`` lines printed on stdout.

    A cell's stdout is read as one text: the kernel may split one ``print`` into several outputs."""
    found = []
    for cell in nb["cells"]:
        if cell.get("cell_type") != "code":
            continue
        text = "".join(
            "".join(o.get("text", "")) for o in cell.get("outputs", []) if o.get("output_type") == "stream" and o.get("name") == "stdout"
        )
        for line in text.splitlines():
            if line.startswith(SUMMARY_TAG + " "):
                with contextlib.suppress(ValueError):
                    value = json.loads(line[len(SUMMARY_TAG) + 1 :])
                    if isinstance(value, dict):
                        found.append(value)
    return found


# -- running notebooks -------------------------------------------------------------------


@contextlib.contextmanager
def venv_kernel() -> Iterator[str]:
    """A kernelspec named ``python3`` that runs *this* interpreter, first on ``JUPYTER_PATH`` meanwhile.

    So papermill's kernel is always this virtual environment's Python, whatever
    kernels the user's own Jupyter folders hold."""
    folder = Path(tempfile.mkdtemp(prefix="walkit-kernel-"))
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        # log level ERROR: no "running over TCP without encryption" warning per kernel on the terminal
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", "--IPKernelApp.log_level=ERROR"],
        "display_name": "Python 3 (walkit)",
        "language": "python",
    }))
    before = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(folder)] + ([before] if before else []))
    try:
        yield KERNEL
    finally:
        if before is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = before
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class NotebookRun:
    """One executed notebook."""

    source: Path
    output: Path
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    charts: list[Path] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    nb: Any = None

    @property
    def ok(self) -> bool:
        return not self.errors


def run_notebook(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    parameters: dict[str, Any] | None = None,
    *,
    kernel: str = KERNEL,
    cwd: str | os.PathLike[str] | None = None,
) -> NotebookRun:
    """Execute ``source`` into ``output`` with papermill; errors are collected, not raised."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    run = NotebookRun(Path(source), Path(output))
    run.output.parent.mkdir(parents=True, exist_ok=True)
    scratch = None
    if cwd is None:
        cwd = scratch = tempfile.mkdtemp(prefix="walkit-nb-")
    started = time.monotonic()
    failed: str | None = None
    try:
        papermill.execute_notebook(
            str(source), str(output), parameters=parameters or {}, kernel_name=kernel, cwd=str(cwd),
            progress_bar=False, log_output=False,
        )
    except PapermillExecutionError as exc:
        failed = f"{exc.ename}: {exc.evalue}"
    except Exception as exc:  # the kernel died, the notebook is unreadable, ...
        run.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        run.seconds = time.monotonic() - started
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if run.output.exists():
        run.nb = nbformat.read(run.output, as_version=4)
        run.errors += error_outputs(run.nb)
        found = summaries(run.nb)
        run.summary = found[-1] if found else None
    elif not run.errors and failed is None:
        run.errors.append("papermill wrote no output notebook")
    if failed is not None and failed not in run.errors:
        run.errors.append(failed)
    return run


# -- the story ---------------------------------------------------------------------------


def _sum(runs: Sequence[NotebookRun], key: str) -> int | None:
    values = [r.summary[key] for r in runs if r.summary and isinstance(r.summary.get(key), (int, float))]
    return int(sum(values)) if values else None


def _max(runs: Sequence[NotebookRun], key: str) -> float | None:
    values = [float(r.summary[key]) for r in runs if r.summary and isinstance(r.summary.get(key), (int, float))]
    return max(values) if values else None


def run_story(out_dir: str | os.PathLike[str] = "build", notebooks: str | os.PathLike[str] | None = None, out: TextIO | None = None) -> int:
    """Execute every notebook into ``out_dir``/notebooks, save charts, print the summary; 0 if all is well."""
    out = out or sys.stdout
    out_dir = Path(out_dir)
    found = find_notebooks(notebooks)
    if not found:
        print(f"walkit story: no notebooks in {notebooks or 'notebooks/'}", file=out)
        return 1
    executed = out_dir / "notebooks"
    executed.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.png"):
        if any(stale.name.startswith(nb.stem + "-") for nb in found):
            stale.unlink()
    print(f"walkit story: running {len(found)} notebooks headless (papermill, default parameters) into {executed}/", file=out, flush=True)
    runs: list[NotebookRun] = []
    started = time.monotonic()
    with venv_kernel() as kernel:
        for nb in found:
            print(f"  {nb.name:<34}", end="", file=out, flush=True)
            run = run_notebook(nb, executed / nb.name, kernel=kernel)
            if run.nb is not None:
                for n, png in enumerate(png_outputs(run.nb), start=1):
                    path = out_dir / f"{nb.stem}-{n}.png"
                    path.write_bytes(png)
                    run.charts.append(path)
            runs.append(run)
            state = "ok" if run.ok else "FAILED"
            charts = f"{len(run.charts)} chart{'s' if len(run.charts) != 1 else ''}"
            print(f"{state:<7}{run.seconds:6.1f} s  {charts}", file=out, flush=True)
            for error in run.errors:
                print(f"      {error}", file=out)
    total = time.monotonic() - started
    _print_summary(runs, out_dir, total, out)
    checks, passed = _sum(runs, "restore_checks") or 0, _sum(runs, "restore_checks_passed") or 0
    return 0 if all(r.ok for r in runs) and passed == checks else 1


def _print_summary(runs: Sequence[NotebookRun], out_dir: Path, total: float, out: TextIO) -> None:
    def num(value: int | None) -> str:
        return "-" if value is None else f"{value:,}"

    charts = [c for r in runs for c in r.charts]
    print(f"\n{sum(r.ok for r in runs)} of {len(runs)} notebooks ran without an error in {total:.1f} s; "
          f"{len(charts)} charts saved in {out_dir}/", file=out)
    without = [r.source.name for r in runs if r.ok and r.summary is None]
    rpo = _max(runs, "worst_offsite_rpo_hours")
    refused = _sum(runs, "second_calls_refused")
    rows = [
        ("events captured", num(_sum(runs, "events_captured"))),
        *([("document changes", num(changes))] if (changes := _sum(runs, "changes_captured")) is not None else []),
        ("uploads made / failed", f"{num(_sum(runs, 'uploads_ok'))} / {num(_sum(runs, 'uploads_failed'))}"
         + (f"  (second calls refused: {refused:,})" if refused else "")),
        ("worst off-site RPO", "-" if rpo is None else f"{rpo:.1f} h"),
        ("restore checks passed", f"{num(_sum(runs, 'restore_checks_passed'))} / {num(_sum(runs, 'restore_checks'))}"),
    ]
    for label, value in rows:
        print(f"  {label:<24}{value}", file=out)
    if without:
        print(f"  (no {SUMMARY_TAG} line from {', '.join(without)})", file=out)


# -- command line ------------------------------------------------------------------------


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("build"), metavar="DIR", help="where executed notebooks and charts go (default: build)")
    parser.add_argument("--notebooks", type=Path, default=None, metavar="DIR", help="the notebooks' folder (default: ./notebooks)")


def _cmd(args: argparse.Namespace) -> int:
    return run_story(args.out, args.notebooks)


def register(sub: Any) -> None:
    """Add ``walkit story`` to the ``walkit`` command's sub-parsers."""
    p = sub.add_parser(
        "story",
        help="run every notebook headless: executed notebooks, charts and a summary (what `make demo` does)",
        description=(
            "Execute every notebook in notebooks/ with papermill (default parameters) into OUT/notebooks/, save each "
            "chart as OUT/<notebook>-<n>.png and print a summary: events captured, uploads made and failed, the worst "
            "off-site RPO, restore checks passed. Needs walkit[notebooks]. Notebooks use $MONGODB_URI when set, else "
            "each starts the embedded sandbox. Exit 0 only if every notebook ran and every restore check passed."
        ),
    )
    _add_arguments(p)
    p.set_defaults(func=_cmd)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m walkit.lab.story", description="Run every notebook headless (what `make demo` does).")
    _add_arguments(parser)
    return _cmd(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
