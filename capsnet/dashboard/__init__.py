"""The live Visdom dashboard (dashboard.py: a listener of the training loop's records), its
server (server.py, `python -m capsnet.dashboard`) and page files (assets.py), and the figure grids
it shares with capsnet.analyze (figures.py)."""
