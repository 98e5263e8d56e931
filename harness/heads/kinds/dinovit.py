"""`dinovit`: one DINOv2 transformer block over the tokens, then their mean."""

from harness.heads.kinds import CONTENT, Kind, register

register(Kind(name="dinovit", pooler="harness.heads.pool.dinovit:build", options={"content": CONTENT}))
