"""Where workers run, and the worker loop they all run: worker.py (claim a job, run it, record it, repeat),
local.py (this process or a pool of `--workers N` processes), slurm.py (one Slurm job array whose tasks run the same
loop) with cluster.py (the cluster profile); liveness.py and running_view.py (who is alive, who holds what),
work.py (what is left of an experiment), display.py (what a worker prints)."""
