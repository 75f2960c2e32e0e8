"""The Ray runtime: cluster connection, parameter-server shards and graph shards.

Import the submodules directly (``distgnn.ray_runtime.cluster``, ``.ps``, ``.graph_shard``); this
package imports nothing heavy itself so that ``distgnn --help`` stays fast.

- ``cluster``: ``connect``, ``check_resources``, ``get_with_deadline``, placement helpers, logs;
- ``ps``: ``PSShard`` actors and the ``RayEmbeddingStore`` client (the ``EmbeddingStore`` interface);
- ``graph_shard``: ``GraphShard`` actors, ``DistributedNeighborSampler``, ``RayGraphStore``;
- ``testing``: a pytest plugin that attaches the Ray workers' logs to failing tests.
"""
