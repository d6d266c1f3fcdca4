"""The evaluation: the lm-eval tasks' wiring, the knowledge report of `unstar unlearn`, and the bench that runs every
method on one world and reports them side by side."""
