"""The data: the table of datasets (datasets.py), a reader per file format, the made datasets
(canvas.py: mnist40 and MultiMNIST; affine.py: the affNIST stand-in), splits read once
(splits.py) and the batches every run is served (batches.py)."""
