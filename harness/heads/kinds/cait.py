"""`cait`: one CaiT class-attention block with LayerScale on a learned class token, then a LayerNorm."""

from harness.heads.kinds import CONTENT, Kind, register

register(Kind(name="cait", pooler="harness.heads.pool.cait:build", options={"content": CONTENT}))
