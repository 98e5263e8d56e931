"""`jepa`: efficient probing's copy of V-JEPA's pooler: 16 heads, the output projection applied (unlike `query`)."""

from harness.heads.kinds import CONTENT, Kind, Option, positive_int, register

register(Kind(name="jepa", pooler="harness.heads.pool.jepa:build", options={
    "num_heads": Option(16, "a positive integer dividing the width (efficient probing's --num_heads)", positive_int),
    "content": CONTENT,
}))
