"""Parameter studies: many simulator runs on local processes or Dask, results as a Parquet dataset.

Layers (each imports only those before it): :mod:`adapter` (the one coupling with :mod:`gmemlab.sim`),
:mod:`spec` (sweep files), :mod:`tasks` (expansion, input hashes), :mod:`worker` (what a worker runs),
:mod:`dataset` (Parquet parts), :mod:`executors` (local processes, Dask), :mod:`runner` (:func:`run_tasks`),
:mod:`query` (DuckDB over a dataset) and :mod:`plot` (mean and 95% interval over seeds).
"""
