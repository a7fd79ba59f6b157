"""A trial of an Optuna search (``hydra/sweeper=optuna_study``) reports to its study, and stops when pruned.

The sweeper (hydra_plugins/lstm_train_sweeper) runs each trial as a Hydra job and passes it its trial number as
``hydra.sweeper.trial``. The job opens the study from the storage its config names (``hydra.sweeper.storage``,
SQLite in the sweep dir, which every launcher's processes reach), reports the monitored value at every
evaluation, and asks the pruner (``hydra.sweeper.pruner``) whether to go on (not at the run's last evaluation: a
trial trained to its end is complete). When it says no, the trainer has just saved last.pt: :class:`Pruned`
ends the job there, and the sweeper tells the study the trial was pruned.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lstm_train.errors import Pruned
from lstm_train.training.callbacks import Callback

if TYPE_CHECKING:
    from lstm_train.training.trainer import Trainer

log = logging.getLogger(__name__)

def trial_callbacks(monitor: str, world_size: int = 1) -> list[Callback]:
    """In a trial of the sweeper with a storage, the callback that reports the ``monitor``ed value (val/...) to
    the study after each evaluation and raises :class:`Pruned` when the pruner says so; elsewhere none."""
    sweeper = HydraConfig.get().sweeper if HydraConfig.initialized() else None
    trial = OmegaConf.select(sweeper, "trial", default=None) if sweeper is not None else None
    if trial is None or OmegaConf.select(sweeper, "storage", default=None) is None:
        return []
    if world_size > 1:  # rank 0 alone would stop, and the others would wait for it
        log.warning("Optuna trial %d runs in %d processes: its values are not reported and it is never pruned",
                    trial, world_size)
        return []
    monitor = f"val/{monitor.removeprefix('val/')}"
    return [TrialReport(sweeper.storage, sweeper.study_name, trial, sweeper.get("pruner"), monitor)]


class TrialReport(Callback):
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

    def on_evaluated(self, trainer: Trainer, final: bool) -> None:
        """Report; unless the run ends here anyway (a trial trained to the end is complete), ask the pruner."""
        step, value = trainer.progress.step, trainer.progress.last_val[self.monitor.removeprefix("val/")]
        self.trial.report(value, step)
        if self.pruner is not None and not final and self.trial.should_prune():
            pruned = Pruned(step, self.monitor, value, trainer.monitor.best)
            log.info("%s (%s); its last.pt is kept", pruned, self.pruner._target_.rpartition(".")[2])
            raise pruned
