"""Trainer callbacks: dvclive logging at the trainer's own step.
"""

from __future__ import annotations


def dvclive_callback(live):
    """Log every trainer record to dvclive at the trainer's own global step.

    dvclive's DVCLiveCallback advances its step once per log *event*, so the loss and the validation
    curves would not share an x-axis; this keeps `step` = optimizer steps in every TSV.
    """
    from transformers import TrainerCallback

    class StepAlignedDVCLive(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            live.step = state.global_step
            for key, value in (logs or {}).items():
                # eval_sequential_score: the mean of the two validation sets, the score the kept checkpoint won on
                if key in ("loss", "grad_norm", "learning_rate", "eval_sequential_score") or key.startswith("eval_val_"):
                    live.log_metric(key.replace("eval_", "eval/", 1), value)
            live.make_summary()

    return StepAlignedDVCLive()
