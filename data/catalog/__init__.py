"""The SQL catalog: an index of the episode store that training runs query.

The store is the source of truth; the catalog can always be rebuilt from it (`recap data fsck`).
"""

from data.catalog.catalog import Catalog, EpisodeRecord, ReconcileReport, TrainingSelection, default_catalog_url

__all__ = ["Catalog", "EpisodeRecord", "ReconcileReport", "TrainingSelection", "default_catalog_url"]
