"""Stand-in for `python -m flows select` while that command is not in this checkout.

Same settings (OPENIMAGER_* and the flags below), same stage functions, same output file;
it imports only what a selection needs, so benchmarks/metadata.py can time the whole process:

    python benchmarks/select_command.py --classes Hamburger Sandwich --workspace workspace
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    """Select the boxes of the classes into <workspace>/selection.parquet; print counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", nargs="+")
    parser.add_argument("--workspace")
    args = parser.parse_args()

    from collections import Counter

    import pyarrow.compute as pc

    from flows.openimages.metadata import Metadata
    from flows.openimages.select import Filters, select_batches, write_selection
    from flows.progress import stepper
    from flows.settings import Settings

    settings = Settings(**{k: v for k, v in vars(args).items() if v is not None})
    store = Metadata(settings.metadata_url, settings.metadata_dir, settings.openimages_version,
                     tuple(settings.splits), settings.check_upstream, settings.metadata_cache,
                     progress=stepper("metadata")).refresh()
    filters = Filters(
        include_subclasses=settings.include_subclasses, relabel=settings.relabel_subclasses,
        exclude_classes=tuple(settings.exclude_classes), depiction=settings.depiction,
        group_of=settings.group_of, occluded=settings.occluded, truncated=settings.truncated,
        inside=settings.inside, source=settings.box_source,
        min_box_fraction=settings.min_box_fraction,
        max_images_per_class=settings.max_images_per_class, balance=settings.balance_classes,
        seed=settings.selection_seed)
    per_class: Counter[str] = Counter()

    def counted(batches):
        for batch in batches:
            for count in pc.value_counts(batch["Class"]).to_pylist():
                per_class[count["values"]] += count["counts"]
            yield batch

    dest = settings.workspace / "selection.parquet"
    rows = write_selection(counted(select_batches(store, store.ontology(), settings.classes,
                                                  filters)), dest)
    for name, boxes in sorted(per_class.items()):
        print(f"{name}\t{boxes} boxes")
    print(f"selection: {dest} ({rows} boxes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
