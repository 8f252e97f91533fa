"""Import an existing ImageFolder tree: ``<root>/<species>/*.jpg``.

A species folder is named by scientific name (``Amanita muscaria`` or ``amanita_muscaria``)
or taxon id (``48715``). Photos in a sub-folder ``<root>/<species>/<observation>/`` share
that observation id; a photo directly in the species folder is its own observation. A photo's
EXIF ``DateTimeOriginal``, where it has one, is its ``observed_on`` date (a broken EXIF block or
an impossible date is logged and the photo kept without a date).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from mushroom.manifest import PhotoRecord
from mushroom.month_prior import exif_date
from mushroom.sources.settings import FolderSourceConfig
from mushroom.species import Catalog, load_catalog

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def _species_dirs(root: Path, catalog: Catalog, ignore: Catalog | None = None) -> dict[int, Path]:
    full = load_catalog()
    dirs, unknown = {}, []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        # The configured taxa first: they may lie beyond the catalog (unknown species).
        species = catalog.find(d.name) or full.find(d.name)
        if species is None and ignore is not None and ignore.find(d.name) is not None:
            log.info("skipping %s: an unknown species (open-set evaluation only)", d)
            continue
        if species is None:
            unknown.append(d.name)
        elif species.taxon_id in catalog:
            dirs[species.taxon_id] = d
        else:
            log.info("skipping %s: %s is not among the configured species", d, species.scientific_name)
    if unknown:
        raise ValueError(
            f"folder {root}: sub-folders {unknown} match no catalog species; name them by scientific "
            f"name (e.g. 'Amanita muscaria' or 'amanita_muscaria') or taxon id"
        )
    missing = [s.scientific_name for s in catalog if s.taxon_id not in dirs]
    if missing:
        log.warning("folder %s has no photos for %d species: %s", root, len(missing), ", ".join(missing))
    return dirs


def _is_image(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # noqa: BLE001 - any decoder failure means "not usable"
        return False


def _place(src: Path, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    tmp = dst.with_name(f".{dst.name}.tmp")
    if link:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    else:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def import_folder(config: FolderSourceConfig, catalog: Catalog, out_dir: Path,
                  ignore: Catalog | None = None) -> list[PhotoRecord]:
    """Import photos from an ImageFolder tree into the dataset folder ``out_dir``.

    Args:
        config: ``root`` of the tree and whether to hard-link (else copy) photos.
        catalog: The configured species (possibly beyond the catalog: unknown species); folders
            of other catalog species are skipped.
        out_dir: The dataset folder.
        ignore: Taxa whose folders are skipped without complaint (the unknown species, when
            importing the trained ones).

    Returns:
        One record per usable photo. Unreadable files are skipped and logged.
    """
    root = Path(config.root)
    records, bad = [], []
    for taxon_id, species_dir in _species_dirs(root, catalog, ignore).items():
        files = sorted(p for p in species_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for src in tqdm(files, desc=f"import {species_dir.name}", unit="photo", leave=False):
            if not _is_image(src):
                bad.append(str(src))
                continue
            rel = src.relative_to(species_dir)
            observation = rel.parts[0] if len(rel.parts) > 1 else rel.stem
            photo_id = "-".join(rel.with_suffix("").parts)
            dst_rel = Path("images") / str(taxon_id) / f"{photo_id}{src.suffix.lower()}"
            _place(src, out_dir / dst_rel, config.link)
            taken = exif_date(src)
            if taken.notice:
                log.warning("%s: %s; kept without a date", src, taken.notice)
            records.append(
                PhotoRecord(
                    observation_id=f"{taxon_id}/{observation}",
                    photo_id=f"{taxon_id}/{photo_id}",
                    taxon_id=taxon_id,
                    file=dst_rel.as_posix(),
                    license="unknown",
                    attribution=f"local folder {root.name}",
                    observed_on="" if taken.value is None else taken.value.isoformat(),
                )
            )
    if bad:
        log.warning("skipped %d unreadable files, e.g. %s", len(bad), bad[:3])
    log.info("imported %d photos from %s", len(records), root)
    return records


def collect_folder(config: FolderSourceConfig, catalog: Catalog, out_dir: Path, seed: int,
                   ignore: Catalog | None = None) -> list[PhotoRecord]:
    """The registry's collector (:mod:`mushroom.sources.registry`): :func:`import_folder`."""
    return import_folder(config, catalog, out_dir, ignore=ignore)
