"""Hydra's Optuna sweeper, made to continue its study: ``hydra/sweeper=optuna_study`` (conf/hydra/sweeper/).

The plugin reloads a stored study (``load_if_exists``) but runs ``n_trials`` more trials each time it starts,
numbering its jobs from 0 again. This subclass counts the trials the study has finished (complete or failed),
runs only the ones still missing, numbers the new jobs after the study's trials (so job N is trial N and no
job dir is reused), and creates the sweep dir before Optuna opens its SQLite file there. Everything else is
the plugin's own engine. Hydra loads sweepers only from the ``hydra_plugins`` package, hence this location.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.errors import HydraException

log = logging.getLogger(__name__)

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # no `sweep` extra: nothing to extend (Hydra imports this module on every run)
    OptunaSweeper = None

if OptunaSweeper is not None:

    class ResumableOptunaSweeper(OptunaSweeper):
        def sweep(self, arguments: list[str]) -> None:
            import optuna

            optuna.logging.disable_default_handler()  # Optuna's lines go to Hydra's log, in its format
            optuna.logging.enable_propagation()
            impl = self.sweeper  # the plugin's OptunaSweeperImpl, set up by Hydra
            if impl.storage is None:  # in memory: a fresh study each time, nothing to continue
                return super().sweep(arguments)
            Path(str(impl.sweep_dir)).mkdir(parents=True, exist_ok=True)  # the SQLite file lives there
            study = optuna.create_study(
                study_name=impl.study_name, storage=impl.storage, directions=impl._get_directions(),
                load_if_exists=True,
            )
            finished = sum(t.state.is_finished() for t in study.trials)
            if study.trials:
                log.info(
                    "Continuing study %s: %d of %d trials finished, %d to run (jobs from #%d on)",
                    study.study_name, finished, impl.n_trials, max(impl.n_trials - finished, 0), len(study.trials),
                )
            impl.n_trials = max(impl.n_trials - finished, 0)
            impl.job_idx = len(study.trials)  # trials cut off by a kill keep their numbers (and job dirs)
            try:
                return super().sweep(arguments)
            except ValueError as e:  # the plugin's study.best_trial at the end, when no trial completed
                if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
                    raise
                raise HydraException(
                    f"no trial of study {study.study_name} completed: the errors are in the sweep summary, "
                    f"{impl.sweep_dir}/sweep_summary.md"
                ) from e
