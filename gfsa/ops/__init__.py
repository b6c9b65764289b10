"""Operations over runs: Slurm sweeps (``sweep``), reports beside the paper (``report``, with the paper's
tables in ``tables``), oversmoothing analysis (``analysis``) and benchmarks (``bench``)."""
