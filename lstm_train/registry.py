"""The options of the model and task config groups: classes that register themselves where they are defined.

A subclass of :class:`lstm_train.models.Model` or :class:`lstm_train.tasks.Task` that sets ``name`` is an option
of its group: :meth:`Registered.__init_subclass__` adds it to the group's :class:`Registry` (name -> class) and
stores its schema dataclass ``Config`` in Hydra's ConfigStore as ``schema_<group>_<name>``, which the option's
YAML file pulls in. So that every schema is there before Hydra composes a config, the packages
lstm_train.models and lstm_train.tasks import all their modules (:func:`import_modules`), and lstm_train.config
imports both packages.

A class outside the package (your own module): its YAML file, in a directory on Hydra's search path
(``hydra.searchpath=[file://DIR]``), names the class with ``_target_: your_module.YourModel`` instead of pulling
in a schema; the module is imported (and so registered) when the config is validated, and the composed values
are checked against its schema then. See docs/extending.md#adding-a-task-or-a-model.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore

from lstm_train.errors import ConfigError

MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")  # an absolute dotted module name: nothing relative


class Registry(dict[str, type]):
    """One config group's options: name -> class, in the order they were defined."""

    def __init__(self, group: str) -> None:
        super().__init__()
        self.group = group

    def add(self, cls: type) -> None:
        known = self.get(cls.name)
        if known is not None and _where(known) != _where(cls):
            raise TypeError(f"{self.group} {cls.name!r} is defined twice: {_where(known)} and {_where(cls)}")
        self[cls.name] = cls
        # Top-level names, not a group: Hydra would list a schema group among the options in --help.
        ConfigStore.instance().store(name=f"schema_{self.group}_{cls.name}", node=cls.Config)

    def option(self, node: Mapping[str, Any]) -> type:
        """The class of a composed group node (the user's own config): by its ``name``, after importing the module
        of its ``_target_`` (an option outside the package) if it has one. A checkpoint's: :meth:`named`."""
        target = node.get("_target_")
        if target:
            module = str(target).rpartition(".")[0]
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise ConfigError(f"{self.group}._target_", f"cannot import {module} ({e}); put its directory on "
                                  "PYTHONPATH") from None
        name = node.get("name")
        if name not in self:
            raise ConfigError(f"{self.group}.name", f"unknown {self.group} {name!r}; choose one of {', '.join(self)}")
        return self[name]

    def named(self, node: Any) -> type:
        """The class of a checkpoint's group node, by its ``name`` alone: never imports a module. Its ``_target_``
        (an option from outside the package) must be the class registered under that name, which is only the case
        once the user has imported its module; anything else is a ConfigError."""
        name = node.get("name") if isinstance(node, Mapping) else None
        if not isinstance(name, str):
            raise ConfigError(self.group, f"not a {self.group} option (a mapping with a name), got {_kind(node)}")
        cls, target = self.get(name), node.get("_target_")
        if target is not None:
            module = str(target).rpartition(".")[0]
            if not MODULE.fullmatch(module):
                raise ConfigError(f"{self.group}._target_", f"{str(target)!r} is not a class of a module")
            if cls is None and module not in sys.modules:
                raise ConfigError(f"{self.group}._target_", f"{target} is outside lstm_train and a checkpoint "
                                  f"imports nothing by itself; if you trust that code, pass --import {module}")
            if cls is None or _where(cls) != target:
                found = f"is {_where(cls)}" if cls is not None else "is not registered"
                raise ConfigError(f"{self.group}._target_", f"{target} does not define {self.group} {name!r} "
                                  f"(that name {found})")
        if cls is None:
            raise ConfigError(f"{self.group}.name", f"unknown {self.group} {name!r}; choose one of {', '.join(self)}")
        return cls

    def supporting(self, method: str) -> list[type]:
        """The options whose class implements ``method`` (one of the base class's optional methods)."""
        return [cls for cls in self.values() if implements(cls, method)]


class Registered:
    """A config option's class: a subclass that sets ``name`` registers itself (and its ``Config``) in ``registry``."""

    registry: ClassVar[Registry]
    name: ClassVar[str]
    Config: ClassVar[type]  # the schema dataclass of its YAML file

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in vars(cls):  # an intermediate base (TaggingTask, Seq2SeqTask) has no name of its own
            cls.registry.add(cls)


def implements(cls: type, method: str) -> bool:
    """Whether ``cls`` overrides an optional ``method`` of its registry's base class (its default refuses)."""
    base = next(c for c in reversed(cls.__mro__) if "registry" in vars(c))
    return getattr(cls, method) is not getattr(base, method)


def import_modules(package: str, path: Iterable[str]) -> None:
    """Import every module of a package: each registers the options it defines."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")


def import_named(modules: Iterable[str]) -> None:
    """Import the modules a user named (the tools' ``--import``): what registers their own models and tasks."""
    for module in modules:
        if not MODULE.fullmatch(module):
            raise ConfigError("--import", f"{module!r} is not a module name; give a dotted name such as my_models")
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError("--import", f"cannot import {module} ({e}); put its directory on PYTHONPATH") from None


def _kind(value: Any) -> str:
    return "a mapping without a name" if isinstance(value, Mapping) else f"{type(value).__name__} {value!r:.40}"


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
