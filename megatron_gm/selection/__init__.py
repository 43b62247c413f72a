"""Selection (docs/method.md step 4): scoring the pool, clustering, greedy group selection.

- ``greedy.py``       greedy relational pick inside one cluster (running sums, O(|C| d) memory)
- ``methods.py``      group / individual / quota / random with one budget; ``select_documents`` in one process
- ``cluster.py``      spherical k-means (faiss) on a seeded sample, nearest-centroid assignment
- ``score_store.py``  the pool-scores folder (h, s shards with markers); ``write_scores`` for given arrays
- ``scoring.py``      the scoring phase: embedding + scoring shards with the influence model; the model hash
- ``comm.py``         the ranks (mpi4py: mpirun, srun --mpi=pmix/pmi2, or one process)
- ``config.py``       the run's config, the plan rank 0 broadcasts, its clock and summary
- ``run.py``          the sharded run: score, cluster, assign, select, gather, write
- ``cli.py``          ``tools/select_data.py``

The selection artifact ``--gm-selection`` reads is ``megatron_gm/data/selection.py``.
"""
