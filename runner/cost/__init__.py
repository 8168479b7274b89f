"""What a spec will cost before it runs: `python -m runner SPEC --dry-run [--calibrate]`.

- runner.cost.work: images each model will train and evaluate (epochs x patches; ASHA's expected share of epochs
  for a pruned search), from the spec alone. Standard library only.
- runner.cost.calibrate: a short measurement of each distinct model on this device (training and evaluation
  images per second, the fixed cost of a job), written under the run root.
- runner.cost.estimate: the two together: expected device-hours per model and in total, as a table.
"""
