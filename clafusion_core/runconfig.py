"""The one place the comparison tools (barrier, many-model fusion, method comparison, run bundles)
build, vary and serialise a :class:`~.pipeline.FusionConfig`.

Keeping every construction behind these four functions makes a change of the config's shape (flat
fields today, nested sub-configs next) a change here only.
"""

from __future__ import annotations

from dataclasses import asdict, replace

from .pipeline import FusionConfig


def make_config(**settings) -> FusionConfig:
    """A config from flat settings (field name → value); unknown names raise ``TypeError``."""
    return FusionConfig(**settings)


def with_settings(config: FusionConfig, **settings) -> FusionConfig:
    """``config`` with the given flat settings changed."""
    return replace(config, **settings) if settings else config


def config_to_json(config: FusionConfig) -> dict:
    """The config as plain JSON values (the ``config`` of ``result.json`` and of a run file)."""
    return asdict(config)


def config_from_json(values: dict) -> FusionConfig:
    """Inverse of :func:`config_to_json` (JSON lists back to the tuples the config holds)."""
    values = dict(values)
    if values.get("mapping") is not None:
        values["mapping"] = tuple(tuple(int(a) for a in stage) for stage in values["mapping"])
    return make_config(**values)


def method_options(config: FusionConfig, name: str):
    """The options of fusion method ``name``: the config's (OT's fields are always there), else the method's defaults."""
    from .methods import get_method

    if name == config.method:
        return config.method_options()
    return config.ot_options() if name == "ot" else get_method(name).options_type()
