"""`siglip`: SigLIP's MAP head, one latent query over the raw tokens, then y + MLP(y)."""

from harness.heads.kinds import CONTENT, Kind, register

register(Kind(name="siglip", pooler="harness.heads.pool.siglip:build", options={"content": CONTENT}))
