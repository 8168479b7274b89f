"""mkdocs hooks (mkdocs.yml `hooks:`): add the generated reference pages to the build as virtual files.

They exist only inside the build (nothing is written to docs/), so they cannot be committed and go stale.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parents[1]):  # generated_pages.py and _project.py beside this file; the project for its imports
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import generated_pages  # noqa: E402

from mkdocs.structure.files import File, Files  # noqa: E402


def on_files(files: Files, config) -> Files:
    for name, make in generated_pages.PAGES.items():
        if files.get_file_from_path(name) is not None:
            raise ValueError(f"docs/{name} is generated at build time: delete the file from docs/")
        files.append(File.generated(config, name, content=make()))
    return files
