"""lm-eval task folder shipped with unstar-trl (pass its path to --include_path)."""
