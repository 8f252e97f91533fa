"""The registry of data sources: each one defined once (settings, collector, how it describes itself).

Configuration validation lists the registered names and validates ``dataset.<name>:`` with the
source's settings model; the acquire stage runs its collector; the bundle's provenance, the
report and ``identify`` describe a dataset with its sentence. A source is added by one module
that :func:`register`-s a :class:`Source` (and is imported by :mod:`mushroom.sources.builtin`
or by the code that uses it); nothing else has to change.

Nothing heavy is imported here: the built-in sources' collectors and settings models are
imported when first used (configuration validation imports this module).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mushroom.registry import Registry


@dataclass(frozen=True)
class Source:
    """One data source.

    Attributes:
        name: The configuration's ``dataset.source`` value; its settings are ``dataset.<name>:``.
        settings: ``settings()`` -> the pydantic model class of those settings (a function, so
            that the model's module is imported when first needed).
        collect: ``collect(settings, catalog, out_dir, seed, ignore)`` -> the photo records
            (files relative to ``out_dir``); ``ignore`` is a catalog of taxa to skip without
            complaint.
        describe: ``describe(data)`` -> one sentence on what a dataset of this source is, from
            the recorded ``provenance.data`` (source, acquisition time, the settings as dumped);
            the report prints it after "Data source:", ``identify`` after "trained on:".
        recorded: ``recorded(settings_dump)`` -> the fields ``provenance.data`` keeps beside
            the settings (e.g. iNaturalist's place and licences).
        settings_required: The settings have no defaults: ``dataset.<name>:`` must be given.
        synthetic: Not photos of mushrooms (a banner in the report and in ``identify``).
        metrics: ``metrics(dataset_dir)`` -> extra acquire-stage metrics of a built dataset (e.g.
            iNaturalist's failures by reason), beside the photo counts every source reports.
    """

    name: str
    settings: Callable[[], Any]
    collect: Callable[..., list]
    describe: Callable[[dict[str, Any]], str]
    recorded: Callable[[dict[str, Any]], dict[str, Any]] = field(default=lambda settings: {})
    settings_required: bool = False
    synthetic: bool = False
    metrics: Callable[[Any], dict[str, float]] = field(default=lambda dataset_dir: {})

    def settings_model(self):
        """The settings' pydantic model class."""
        return self.settings()


_REGISTRY: Registry[Source] = Registry("source")
register = _REGISTRY.register
unregister = _REGISTRY.unregister
get = _REGISTRY.get
names = _REGISTRY.names


def describe(data: dict[str, Any] | None) -> str:
    """One sentence on what a model was trained on, from ``provenance.data`` (``{}``: unrecorded)."""
    name = (data or {}).get("source")
    if name is None:
        return "not recorded"
    if name not in names():
        return f"a dataset of source {name!r}"
    return get(name).describe(data)


def is_synthetic(data: dict[str, Any] | None) -> bool:
    """Whether the recorded data source draws its photos (not photos of mushrooms)."""
    name = (data or {}).get("source")
    return name in names() and get(name).synthetic


# --- the built-in sources -------------------------------------------------------------------


def _collect_synthetic(*args):
    from mushroom.sources.synthetic import collect_synthetic

    return collect_synthetic(*args)


def _collect_folder(*args):
    from mushroom.sources.folder import collect_folder

    return collect_folder(*args)


def _collect_inaturalist(*args):
    from mushroom.sources.inaturalist import collect_inaturalist

    return collect_inaturalist(*args)


def _settings_model(class_name: str) -> Callable[[], Any]:
    """``settings`` for a built-in source: its model, imported (with pydantic) when first asked."""

    def model():
        from mushroom.sources import settings

        return getattr(settings, class_name)

    return model


def _inaturalist_metrics(dataset_dir) -> dict[str, float]:
    from mushroom.sources.inaturalist import acquisition_report

    card = acquisition_report(dataset_dir)
    return {**{f"failures_{reason}": count for reason, count in card.get("failures_by_reason", {}).items()},
            "species_short": len(card.get("species_short", []))}


def _settings(data: dict[str, Any], name: str) -> dict[str, Any]:
    return ((data.get("config") or {}).get(name)) or {}


def _describe_inaturalist(data: dict[str, Any]) -> str:
    when = data.get("acquired_at")
    return (f"iNaturalist research-grade photos (place {data.get('place_id')}"
            f"{', acquired ' + when[:10] if when else ''})")


def _describe_folder(data: dict[str, Any]) -> str:
    return f"photos from a local folder ({data.get('root') or _settings(data, 'folder').get('root', '?')})"


for _source in (
    Source("synthetic", _settings_model("SyntheticSourceConfig"), _collect_synthetic,
           lambda data: "synthetic drawings of mushrooms (the demo generator), not photos", synthetic=True),
    Source("folder", _settings_model("FolderSourceConfig"), _collect_folder,
           _describe_folder, recorded=lambda settings: {"root": settings.get("root")}, settings_required=True),
    Source("inaturalist", _settings_model("INaturalistSourceConfig"), _collect_inaturalist,
           _describe_inaturalist,
           recorded=lambda settings: {k: settings.get(k) for k in ("place_id", "quality_grade", "licenses")},
           metrics=_inaturalist_metrics),
):
    register(_source)
del _source
