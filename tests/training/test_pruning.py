"""An Optuna trial's callback: its values reported to the study, and pruned only where the run would go on."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
from omegaconf import OmegaConf

from lstm_train.errors import Pruned
from lstm_train.training.pruning import TrialReport


def evaluated_at(step: int, acc: float) -> SimpleNamespace:
    """What the callback reads of a trainer that has just evaluated."""
    return SimpleNamespace(progress=SimpleNamespace(step=step, last_val={"acc": acc}),
                           monitor=SimpleNamespace(best=None))


def test_a_hopeless_trial_is_pruned_but_never_at_its_last_evaluation(tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    for _ in range(2):  # two trials that did far better at every step
        trial = study.ask()
        trial.report(0.9, 4)
        trial.report(0.9, 8)
        study.tell(trial, 0.9)
    study.ask()  # trial 2: this process's
    pruner = OmegaConf.create({"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1})
    report = TrialReport(storage, "s", 2, pruner, "val/acc")
    with pytest.raises(Pruned, match=r"^pruned by the study's pruner at step 4 \(val/acc 0\.1\)$"):
        report.on_evaluated(evaluated_at(4, 0.1), final=False)
    report.on_evaluated(evaluated_at(8, 0.1), final=True)  # trained to its end: complete, not pruned
    assert study.trials[2].intermediate_values == {4: 0.1, 8: 0.1}
