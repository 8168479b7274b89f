#!/bin/bash

# Parameters
#SBATCH --account=lab
#SBATCH --array=0-15%16
#SBATCH --cpus-per-task=8
#SBATCH --exclusive
#SBATCH --gpus-per-task=1
#SBATCH --job-name=runner-d4_grid
#SBATCH --mem=32768M
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output=/runs/slurm/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=normal
#SBATCH --requeue
#SBATCH --signal=USR2@120
#SBATCH --time=240
#SBATCH --wckey=submitit

# setup
module load cuda
source /lab/env/bin/activate

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /runs/slurm/%A_%a_%t_log.out /lab/env/bin/python -u -m submitit.core._submit /runs/slurm
