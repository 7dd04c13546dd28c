"""The retrieval defaults, in a module that imports nothing (command-line ``--help`` shows them fast)."""

#: stage-1 vectors per video: every one of the 32 clip tokens (averaging them into fewer groups shrinks
#: stage 1 but loses recall: 8 groups reach 89.5% identical top-10 where 32 tokens reach 99.1%, MS-SL on
#: `small` at 100 candidates; docs/serving.md)
DEFAULT_STAGE1_VECTORS = 32
#: videos per shard of a corpus index
DEFAULT_SHARD_VIDEOS = 1024
#: videos reranked with the full score per query (docs/serving.md: its measured agreement with exhaustive scoring)
DEFAULT_CANDIDATES = 100
#: the faiss index factory string of stage 1: exact inner product
DEFAULT_STAGE1 = "Flat"
