"""Draw stand-in photos as an ImageFolder tree for the `folder` source example.

    python examples/make_photo_folder.py outputs/folder-example/photos [--config examples/folder.yaml]

Writes ``OUT/<Scientific name>/<observation>/<n>.jpg`` for every species of the configuration:
synthetic drawings (``mushroom.sources.synthetic``; NOT photos of mushrooms), in the layout your
own photos would have. Replace them with your photos and the rest of the walk-through (docs/sources.md,
"Your own photos") stays the same.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_photo_folder(out_dir: str | Path, config_path: str | Path = HERE / "folder.yaml",
                      photos_per_species: int = 60, photos_per_observation: int = 3, seed: int = 7) -> dict[str, int]:
    """Write the tree; return photos per species folder."""
    import yaml

    from mushroom.config import SyntheticSourceConfig
    from mushroom.sources.synthetic import generate_synthetic
    from mushroom.species import load_catalog

    species = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))["dataset"]["species"]
    catalog = load_catalog().subset(species)
    out_dir = Path(out_dir)
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="mushroom-photos-") as work:
        config = SyntheticSourceConfig(photos_per_species=photos_per_species, image_size=128,
                                       photos_per_observation=photos_per_observation)
        records = generate_synthetic(config, catalog, Path(work), seed)
        names = {s.taxon_id: s.scientific_name for s in catalog}
        observations: dict[str, int] = {}  # numbered within each species
        per_species: dict[int, int] = {}
        for r in records:
            if r.observation_id not in observations:
                per_species[r.taxon_id] = per_species.get(r.taxon_id, 0) + 1
                observations[r.observation_id] = per_species[r.taxon_id]
            number = observations[r.observation_id]
            folder = out_dir / names[r.taxon_id] / f"observation-{number:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(work) / r.file, folder / f"{len(list(folder.iterdir())) + 1}.jpg")
            counts[names[r.taxon_id]] = counts.get(names[r.taxon_id], 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="the photo folder to write, e.g. outputs/folder-example/photos")
    parser.add_argument("--config", default=str(HERE / "folder.yaml"), help="whose species to draw")
    parser.add_argument("--photos-per-species", type=int, default=60)
    args = parser.parse_args(argv)
    if Path(args.out_dir).exists() and any(Path(args.out_dir).iterdir()):
        print(f"error: {args.out_dir} is not empty; pick a new folder", file=sys.stderr)
        return 2
    counts = make_photo_folder(args.out_dir, args.config, args.photos_per_species)
    for name, n in counts.items():
        print(f"  {args.out_dir}/{name}/: {n} photos")
    print(f"Stand-in photos (synthetic drawings) in {args.out_dir}: {sum(counts.values())} photos of {len(counts)} "
          "species, grouped by observation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
