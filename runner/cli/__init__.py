"""The command line: `python -m runner`. main.py parses the arguments and runs the sub-commands (run, report, status,
show, schema, bench), infer.py the export, predict and serve sub-commands, data.py `data pcam`, options.py the
options they share. Nothing imports this package (except runner/__main__.py): the commands call down into the runner."""
from runner.cli.main import main, parser

__all__ = ["main", "parser"]
