"""The multi-stage Group-MATES loop: plan, presets, state file, local executor, Slurm driver, estimate."""
