"""The settings models of the built-in data sources (``dataset.synthetic``, ``dataset.folder``,
``dataset.inaturalist``): plain pydantic models that the registry, the configuration and the
sources themselves read, importing nothing of theirs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mushroom.config_base import Strict

DEFAULT_LICENSES = ["cc0", "cc-by", "cc-by-nc", "cc-by-sa", "cc-by-nc-sa"]


class SyntheticSourceConfig(Strict):
    photos_per_species: int = Field(120, ge=6)
    image_size: int = Field(96, ge=32, le=512)
    photos_per_observation: int = Field(2, ge=1, le=10)


class FolderSourceConfig(Strict):
    root: str
    link: bool = Field(True, description="hard-link (or copy) photos into the dataset folder")

    @field_validator("root")
    @classmethod
    def _exists(cls, v: str) -> str:
        if not Path(v).expanduser().is_dir():
            raise ValueError(f"folder {v!r} does not exist or is not a directory")
        return str(Path(v).expanduser())


class INaturalistSourceConfig(Strict):
    api_url: str = "https://api.inaturalist.org/v1"
    place_id: int = 7207  # Germany
    quality_grade: Literal["research", "needs_id", "casual"] = "research"
    photos_per_species: int = Field(1000, ge=1)
    photo_size: Literal["square", "small", "medium", "large"] = "small"
    licenses: list[str] = Field(default_factory=lambda: list(DEFAULT_LICENSES))
    requests_per_minute: int = Field(60, ge=1)
    concurrency: int = Field(4, ge=1, le=64)
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(5, ge=0)
    backoff_factor: float = Field(0.5, ge=0)
    backoff_max: float = Field(60.0, gt=0)
    requests_per_day: int = Field(10_000, ge=2)
    media_bytes_per_hour: int = Field(4_000_000_000, ge=1, description="iNaturalist asks for under 5 GB/h")
    min_photo_side: int = Field(64, ge=1)
    allow_missing_species: bool = False
    user_agent: str = "quantized-mushroom/0.1 (+https://github.com/quantized-mushroom)"

    @model_validator(mode="after")
    def _rates(self):
        if self.requests_per_minute >= self.requests_per_day:
            raise ValueError("requests_per_minute must be below requests_per_day")
        return self

    @field_validator("licenses")
    @classmethod
    def _licenses(cls, v: list[str]) -> list[str]:
        allowed = {"cc0", "cc-by", "cc-by-nc", "cc-by-sa", "cc-by-nc-sa", "cc-by-nd", "cc-by-nc-nd"}
        bad = [x for x in v if x.lower() not in allowed]
        if bad or not v:
            raise ValueError(f"licenses {bad or v} not allowed; choose from {sorted(allowed)}")
        return [x.lower() for x in v]
