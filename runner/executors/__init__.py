"""Where workers run. The local executor is runner.execute.run_jobs (this process or a pool); `slurm` submits
one Slurm job array whose tasks run the same worker loop."""
