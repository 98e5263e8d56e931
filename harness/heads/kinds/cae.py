"""`cae`: CAE's attentive block, one query, separate LayerNorms for query, keys and values, no residual."""

from harness.heads.kinds import CONTENT, Kind, register

register(Kind(name="cae", pooler="harness.heads.pool.cae:build", options={"content": CONTENT}))
