"""A trial of an Optuna search (``hydra/sweeper=optuna_study``) reports to its study, and stops when pruned.

The sweeper (hydra_plugins/lstm_train_sweeper) runs each trial as a Hydra job and passes it its trial number as
``hydra.sweeper.trial``. The job opens the study from the storage its config names (``hydra.sweeper.storage``,
SQLite in the sweep dir, which every launcher's processes reach), reports the monitored value at every
evaluation, and asks the pruner (``hydra.sweeper.pruner``) whether to go on. When it says no, the trainer has
just saved last.pt: :class:`Pruned` ends the job there, and the sweeper tells the study the trial was pruned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lstm_train.errors import Pruned

log = logging.getLogger(__name__)

Report = Callable[[int, float, "dict[str, Any] | None"], None]  # (step, monitored value, the best so far)


def reporter(monitor: str, world_size: int = 1) -> Report:
    """What the trainer calls after each evaluation (once last.pt is saved): in a trial of the sweeper with a
    storage, the report to the study, which raises :class:`Pruned` when the pruner says so; elsewhere nothing."""
    sweeper = HydraConfig.get().sweeper if HydraConfig.initialized() else None
    trial = OmegaConf.select(sweeper, "trial", default=None) if sweeper is not None else None
    if trial is None or OmegaConf.select(sweeper, "storage", default=None) is None:
        return _nothing
    if world_size > 1:  # rank 0 alone would stop, and the others would wait for it
        log.warning("Optuna trial %d runs in %d processes: its values are not reported and it is never pruned",
                    trial, world_size)
        return _nothing
    return TrialReport(sweeper.storage, sweeper.study_name, trial, sweeper.get("pruner"), f"val/{monitor}")


def _nothing(step: int, value: float, best: dict[str, Any] | None = None) -> None:
    pass


class TrialReport:
    """Trial ``number`` of the stored study, as its own process sees it."""

    def __init__(self, storage: str, study_name: str, number: int, pruner: Any, monitor: str) -> None:
        import optuna

        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()
        self.monitor, self.pruner = monitor, pruner
        stored = optuna.storages.get_storage(storage)
        study = optuna.load_study(study_name=study_name, storage=stored,
                                  pruner=optuna.pruners.NopPruner() if pruner is None else instantiate(pruner))
        trial_id = stored.get_trial_id_from_study_id_trial_number(stored.get_study_id_from_name(study_name), number)
        self.trial = optuna.trial.Trial(study, trial_id)

    def __call__(self, step: int, value: float, best: dict[str, Any] | None = None) -> None:
        self.trial.report(value, step)
        if self.pruner is not None and self.trial.should_prune():
            pruned = Pruned(step, self.monitor, value, best)
            log.info("%s (%s); its last.pt is kept", pruned, self.pruner._target_.rpartition(".")[2])
            raise pruned
