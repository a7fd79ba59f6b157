"""This project's Hydra sweepers (Hydra loads sweepers only from the ``hydra_plugins`` package): grid.py, the
grid that continues its sweep dir (``hydra/sweeper=grid``, the default); optuna_study.py, an Optuna study on
its ask-and-tell API, continued and pruned (``hydra/sweeper=optuna_study``)."""
