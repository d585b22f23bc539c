"""A run around the loop: building it (build.py, recipe.py), a run as a library call
(runner.py), its files (storage.py: durable writes and checkpoints; rundir.py), processes
(distributed.py), interrupts (interrupt.py), the memory check (footprint.py, probe.py) and the
allocator (memory.py)."""
