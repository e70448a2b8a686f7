"""Datasets: readers, splits and the TSV files that the pipeline stages pass to each other."""
