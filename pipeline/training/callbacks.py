"""Trainer callbacks: dvclive logging at the trainer's own step.
"""

from __future__ import annotations

# eval_sequential_score: the mean of the two validation sets, the score the kept checkpoint won on
LOGGED = ("loss", "grad_norm", "learning_rate", "eval_sequential_score")


def dvclive_callback(live):
    """Log every trainer record to dvclive at the trainer's own global step.

    dvclive's DVCLiveCallback advances its step once per log *event*, so the loss and the validation
    curves would not share an x-axis; this keeps `step` = optimizer steps in every TSV.
    """
    from transformers import TrainerCallback

    def log(step: int, logs: dict) -> None:
        live.step = step
        for key, value in logs.items():
            if key in LOGGED or key.startswith("eval_val_"):
                live.log_metric(key.replace("eval_", "eval/", 1), value)

    class StepAlignedDVCLive(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            # A run resumed from a checkpoint starts with the trainer's log up to it (empty otherwise): written
            # again here, so the curves hold every step once, as an uninterrupted run's do. What the killed run
            # logged past its checkpoint was in its own temporary folder, and is not kept.
            for record in state.log_history:
                log(record["step"], record)
            if state.log_history:
                live.make_summary()

        def on_log(self, args, state, control, logs=None, **kwargs):
            log(state.global_step, logs or {})
            live.make_summary()

    return StepAlignedDVCLive()
