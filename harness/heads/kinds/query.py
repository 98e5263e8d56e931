"""`query`: V-JEPA's AttentiveClassifier, learned queries; no BatchNorm, PyTorch's default linear init."""

from harness.heads.kinds import CONTENT, Kind, Option, positive_int, positive_number, register

register(Kind(name="query", pooler="harness.heads.pool.query:build", batchnorm=False, linear_std=None, options={
    "num_queries": Option(1, "a positive integer", positive_int),
    "depth": Option(1, "a positive integer (1 cross-attention block, then depth-1 blocks on the queries)",
                    positive_int),
    "mlp_ratio": Option(4.0, "a positive number", positive_number),
    "num_heads": Option(None, "a positive integer dividing the embedding width (default: the backbone's)",
                        lambda v: v is None or positive_int(v)),
    "content": CONTENT,
}))
