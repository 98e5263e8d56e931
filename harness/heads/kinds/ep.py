"""`ep`: efficient probing, learned queries over the raw tokens, each reading its own slice of value channels."""

from harness.heads.kinds import CONTENT, FLAG_FALSE, Kind, Option, positive_int, register

register(Kind(name="ep", pooler="harness.heads.pool.ep:build", options={
    "num_queries": Option(4, "a positive integer dividing embed_dim / d_out", positive_int),
    "d_out": Option(1, "a positive integer dividing the embedding width", positive_int),
    "qkv_bias": FLAG_FALSE,
    "content": CONTENT,
}))
