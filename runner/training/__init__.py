"""One job: the training loop (loop.py) and what it needs: metrics, checkpoints, the device, provenance.

The loop knows nothing of the database; the worker (runner/executors/worker.py) passes it hooks.
"""

# Where a job may train (`--device`; device.pick_device), named here without torch so the CLI can offer them.
DEVICES = ("auto", "cpu", "cuda", "mps")
