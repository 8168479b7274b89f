"""One job: the training loop (loop.py) and what it needs: metrics, checkpoints, the device, provenance.

The loop knows nothing of the database; the worker (runner/executors/worker.py) passes it hooks.
"""
