"""Training data: token files, preparing them, the default corpus, batches for each rank,
and the Goldfish loss masks."""
