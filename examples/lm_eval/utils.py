"""Helpers for lm-eval tasks over Plinth task files (docs/tasks.md)."""


def scored_rows(dataset):
    """The rows Plinth scores by default (split "test"); the others are the few-shot pool."""
    return dataset.filter(lambda row: row["split"] == "test")
