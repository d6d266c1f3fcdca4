"""Progress on the command line: one bar per phase (rounds, steps), the details in the logs."""

from __future__ import annotations

from transformers import PrinterCallback, ProgressCallback


class StepBar(ProgressCallback):
    """The Trainer's step bar without the dict it prints at every log: the logs go to the history, the report and
    `report_to`."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def quiet_progress(trainer) -> None:
    """Give `trainer` a step bar that prints no logs (and, with the bar off, no log printer either)."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if not trainer.args.disable_tqdm:
        trainer.add_callback(StepBar())
