"""Notebook support: simulation, workload, plots, the restore explorer and its widgets, the story and demo."""
