"""Production retrieval with an exported model: a corpus index encoded once (``corpus_index``) and a
two-stage retriever over it (``retriever``): stage 1 a faiss vector search over a few vectors per
video, stage 2 the model's own full score on the candidates."""
