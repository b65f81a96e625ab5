"""Retrieval over large catalogs: an approximate-nearest-neighbour index of a run's item vectors.

A model whose score is a dot product (``Recommender.dot_product``: MF, VBPR, SASRec, GRU4Rec, BERT4Rec,
BM3, LGMRec, I-LLMRec's IRE heads) gives one vector per query and one per item, so its top-k is a
maximum-inner-product search. The layout follows the data:

- :mod:`~llmrec.retrieval.vectors`: the run's item vectors, their digest, exact top-k, similar items;
- :mod:`~llmrec.retrieval.index`: a FAISS index of them (flat, ivf, hnsw), tuned at build time to a recall
  target on held-out queries, saved as ``RUN/index/``;
- :mod:`~llmrec.retrieval.lookup`: a loaded run's index answering queries, honouring the history and filters
  and merging items added after the index was built;
- :mod:`~llmrec.retrieval.command`: ``llmrec index RUN``;
- :mod:`~llmrec.retrieval.bench`: ``llmrec bench-retrieval`` on synthetic catalogs.

Exact scoring stays what evaluation uses: the evaluator never reads an index.
"""
