"""The unstar lm-eval tasks, shipped as package data of `unstar_trl.tasks` (pass `unstar tasks-path` to
lm_eval's --include_path)."""
