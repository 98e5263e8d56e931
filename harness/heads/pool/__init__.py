"""The torch side of the aggregator kinds: each kind's pooling module, named by its declaration in heads/kinds."""
