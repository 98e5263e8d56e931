"""`simpool`: SimPool, query from the mean of the raw tokens, the normalised tokens as keys and values."""

from harness.heads.kinds import CONTENT, Kind, register

register(Kind(name="simpool", pooler="harness.heads.pool.simpool:build", options={"content": CONTENT}))
