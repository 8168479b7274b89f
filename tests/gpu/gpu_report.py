"""The GPU check's records: what machine, one JSON file per part written as rows arrive, one markdown report."""
from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str) -> None:
    """Temp file + rename: a part killed mid-write leaves the previous complete file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    os.replace(temp, path)


class Recorder:
    """A part's rows and checks, rewritten to its JSON file after every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"status": "running", "rows": [], "checks": [], "notes": []}
        self.flush()

    def row(self, **values: Any) -> dict[str, Any]:
        self.data["rows"].append(values)
        self.flush()
        return values

    def check(self, name: str, passed: bool, detail: str) -> bool:
        self.data["checks"].append({"name": name, "passed": bool(passed), "detail": detail})
        print(f"   {'PASS' if passed else 'FAIL'} {name}: {detail}", flush=True)
        self.flush()
        return passed

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        print(f"   note: {text}", flush=True)
        self.flush()

    def finish(self, status: str, error: str | None = None) -> None:
        self.data["status"] = status
        if error:
            self.data["error"] = error
        self.flush()

    def flush(self) -> None:
        write_atomic(self.path, json.dumps(self.data, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    return str(value)


def machine(smoke: bool) -> dict[str, Any]:
    import torch

    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cpu_cores": os.cpu_count()}
    if torch.cuda.is_available() and not smoke:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def render(report: dict[str, Any]) -> str:
    """Markdown: the machine, then per part its status, a table of its rows and its checks."""
    m = report["machine"]
    lines = [f"# GPU check ({report['mode']}), {m['date']}", "",
             f"{m.get('gpu', 'no GPU')}; torch {m['torch']}, CUDA {m['cuda']}, Python {m['python']}", ""]
    for name, part in report["parts"].items():
        lines += _part_lines(name, part)
    return "\n".join(lines) + "\n"


def _part_lines(name: str, part: dict[str, Any]) -> list[str]:
    status = f"{part.get('status')} in {part.get('seconds', 0)} s of {part.get('budget_s', '?')} s"
    lines = [f"## {name}: {status}", ""]
    if part.get("error"):
        lines += [f"error: {part['error']}", ""]
    if part.get("rows"):
        lines += [markdown_table(part["rows"]), ""]
    lines += [f"- {'PASS' if c['passed'] else 'FAIL'} {c['name']}: {c['detail']}" for c in part.get("checks", [])]
    lines += [f"- note: {n}" for n in part.get("notes", [])]
    return lines + [""]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    from tabulate import tabulate

    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    body = [[_cell(row.get(c)) for c in columns] for row in rows]
    return tabulate(body, headers=columns, tablefmt="pipe", disable_numparse=True)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and abs(value) < 1e-2:
            return f"{value:.2e}"
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)
