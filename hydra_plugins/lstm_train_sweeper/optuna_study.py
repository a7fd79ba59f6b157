"""This project's Optuna sweeper: ``hydra/sweeper=optuna_study`` (conf/hydra/sweeper/optuna_study.yaml).

It asks the study for ``n_jobs`` trials at a time (Optuna's ask-and-tell API), hands their overrides to Hydra's
launcher (basic, joblib, submitit: whichever the config names) and tells the study each job's result: the best
value of trainer.monitor, a failure, or that the trial was pruned. With a storage (SQLite in the sweep dir) the
study survives the sweep: started again, it counts the trials already finished (complete, pruned or failed),
runs only the ones still missing, and numbers each job as its trial, so job N is trial N and no job dir is
reused. Each job learns its trial number from ``hydra.sweeper.trial``; through the storage it reports the
monitored value at every evaluation and, with a pruner, stops when the pruner says so
(lstm_train/training/pruning.py). Hydra loads sweepers only from the ``hydra_plugins`` package, hence this
location; Optuna is imported when a sweep starts, so that runs without the sweep extra do not need it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lstm_train.errors import ConfigError, RunError
from lstm_train.runs.jobs import one_line

log = logging.getLogger(__name__)


RESULTS = "optimization_results.yaml"  # the best trial, in the sweep dir (the name Hydra's Optuna plugin used)


class OptunaStudySweeper(Sweeper):
    """The config's keys (conf/hydra/sweeper/optuna_study.yaml); ``sampler`` and ``pruner`` are configs of an
    Optuna sampler and pruner (``_target_``), ``pruner`` None for none; ``trial`` is set in each job only."""

    def __init__(self, sampler: DictConfig, direction: str, storage: str | None, study_name: str | None,
                 n_trials: int, n_jobs: int, max_failure_rate: float, params: Mapping[str, str] | None = None,
                 pruner: DictConfig | None = None, trial: int | None = None) -> None:
        self.sampler, self.pruner, self.direction = sampler, pruner, direction
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = dict(params or {})

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def sweep(self, arguments: list[str]) -> None:
        try:
            import optuna
        except ImportError as e:
            raise ConfigError("hydra/sweeper", "optuna_study needs Optuna, which comes with the sweep extra: "
                              "pip install -e '.[sweep]'") from e
        optuna.logging.disable_default_handler()  # Optuna's lines go to Hydra's log, in its format
        optuna.logging.enable_propagation()
        self._check()
        space, fixed = search_space([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        if self.storage is not None:
            self.sweep_dir.mkdir(parents=True, exist_ok=True)  # the SQLite file lives there
        study = optuna.create_study(storage=self.storage, study_name=self.study_name, direction=self.direction,
                                    sampler=instantiate(self.sampler), load_if_exists=True)
        if study.direction.name.lower() != self.direction:
            raise ConfigError("trainer.monitor", f"the study {study.study_name} in {self.storage} was started to "
                              f"{study.direction.name.lower()} its value, this search would {self.direction} it; "
                              "keep the study's trainer.monitor, or start a new study in another hydra.sweep.dir")
        finished = sum(t.state.is_finished() for t in study.trials)
        started = sum(t.state.name != "WAITING" for t in study.trials)  # waiting: enqueued, run first
        if started:
            log.info("Continuing study %s: %d of %d trials finished, %d to run (jobs from #%d on)", study.study_name,
                     finished, self.n_trials, max(self.n_trials - finished, 0), started)
        while finished < self.n_trials:
            batch = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - finished))]
            # job N is trial N: the numbers go on from the study's trials, so no job dir is reused
            returns = self.launcher.launch([self._overrides(t, fixed) for t in batch],
                                           initial_job_idx=batch[0].number)
            states = [self._tell(study, t, r) for t, r in zip(batch, returns, strict=True)]
            failed = states.count(optuna.trial.TrialState.FAIL)
            finished += len(batch)
            if failed / len(batch) > self.max_failure_rate:
                raise RunError(f"{failed} of {len(batch)} trials failed, more than hydra.sweeper.max_failure_rate="
                               f"{self.max_failure_rate} allows; the errors are in the sweep summary, "
                               f"{self.sweep_dir}/sweep_summary.md")
        self._write_results(study)

    def _check(self) -> None:
        if self.pruner is not None and self.storage is None:
            raise ConfigError("hydra.sweeper.pruner", "a pruner needs the study in a storage, through which each "
                              "trial's process reports its values; set hydra.sweeper.storage (e.g. "
                              "sqlite:///${hydra.sweep.dir}/optuna.db), or drop the pruner: hydra/sweeper/pruner=none")
        if self.n_jobs < 1:
            raise ConfigError("hydra.sweeper.n_jobs", f"must be >= 1, got {self.n_jobs}")

    @staticmethod
    def _overrides(trial: Any, fixed: list[str]) -> list[str]:
        # hydra.* overrides stay out of the job dir's name (hydra.job.override_dirname: the task's only)
        return [*fixed, *(f"{k}={v}" for k, v in trial.params.items()), f"hydra.sweeper.trial={trial.number}"]

    def _tell(self, study: Any, trial: Any, ret: JobReturn) -> Any:
        """Tell the study how the trial's job ended; the state it gets."""
        from optuna.trial import TrialState

        from lstm_train.errors import Pruned

        result = ret._return_value  # .return_value raises a failed job's error
        if ret.status == JobStatus.COMPLETED:
            try:
                value = float(result)
            except (TypeError, ValueError):
                log.warning("Trial %d returned no value (%r): recorded as failed", trial.number, result)
                return study.tell(trial, state=TrialState.FAIL).state
            return study.tell(trial, value).state  # a nan value Optuna itself records as failed
        if isinstance(result, Pruned):
            return study.tell(trial, state=TrialState.PRUNED).state
        log.warning("Trial %d failed: %s", trial.number, one_line(result))
        return study.tell(trial, state=TrialState.FAIL).state

    def _write_results(self, study: Any) -> None:
        from optuna.trial import TrialState

        states = Counter(t.state.name.lower() for t in study.trials)
        if not states["complete"]:
            counts = ", ".join(f"{n} {'failed' if s == 'fail' else s}" for s, n in states.items()) or "none run"
            raise RunError(f"no trial of study {study.study_name} completed ({counts}); the errors are in "
                           f"{self.sweep_dir}/sweep_summary.md: fix their cause, then raise hydra.sweeper.n_trials "
                           "to run more trials in this study, or start a new one in another hydra.sweep.dir")
        best = study.best_trial
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create({
            "name": "optuna", "study": study.study_name, "direction": self.direction, "best_trial": best.number,
            "best_params": best.params, "best_value": best.value,
            "trials": {s.name.lower(): states[s.name.lower()] for s in TrialState if states[s.name.lower()]},
        }), self.sweep_dir / RESULTS)
        log.info("Best trial: #%d, value %s, %s (%s)", best.number, best.value, best.params, self.sweep_dir / RESULTS)


def search_space(overrides: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Optuna's distributions for the sweep overrides (Hydra's syntax), by key, and the other overrides as they
    were written. A key given twice (the search config's params, then the command line) keeps the last."""
    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            fixed[key] = override.input_line
    return space, list(fixed.values())


def distribution(override: Override) -> Any:
    """``choice(a, b)`` and ``a,b``: categorical; ``range(a, b[, step])``: the integers (or floats) from a by step,
    b excluded, as Hydra's range means; ``interval(a, b)``: floats uniform in [a, b], ``tag(log, interval(a, b))``
    log-uniform; ``shuffle(...)`` of a range: categorical over its values."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    sweep = override.value()
    if override.is_interval_sweep():
        return FloatDistribution(sweep.start, sweep.end, log="log" in sweep.tags)
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    key = override.get_key_element()
    if not values:
        raise ConfigError(key, f"{override.input_line} has no values; give it some")
    if override.is_range_sweep() and not sweep.shuffle:
        low, high, step = min(values), max(values), abs(sweep.step)
        if all(isinstance(v, int) for v in (*values, step)):
            return IntDistribution(low, high, step=step)
        return FloatDistribution(low, high, step=step)
    if not all(v is None or isinstance(v, str | int | float | bool) for v in values):
        raise ConfigError(key, f"{override.input_line}: Optuna's choices are strings, numbers, booleans or null")
    return CategoricalDistribution(values)
