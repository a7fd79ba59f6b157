"""Models: one per config option in conf/model/, each registered where its class is defined; :func:`build_model`."""

from lstm_train.registry import import_modules

from .base import MODELS, Model, ModelConfig, build_model, check_fits, count_parameters, models_for
from .encoder import Encoder, Stack

import_modules(__name__, __path__)  # every module here: each registers the models it defines

__all__ = ["MODELS", "Encoder", "Model", "ModelConfig", "Stack", "build_model", "check_fits", "count_parameters",
           "models_for"]
