"""`python -m runner`: parse arguments and call; everything else lives in runner.cli."""
import sys
import warnings

warnings.filterwarnings("ignore", message=".*py3nj.*")  # escnn: only needed for SO(3)

from runner.cli import main  # noqa: E402

sys.exit(main())
