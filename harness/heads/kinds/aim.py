"""`aim`: AIM's attentive pooling, an inner BatchNorm over the tokens' channels, one raw query, 16 heads."""

from harness.heads.kinds import CONTENT, Kind, Option, positive_int, register

register(Kind(name="aim", pooler="harness.heads.pool.aim:build", options={
    "num_heads": Option(16, "a positive integer dividing the width (efficient probing's --num_heads)", positive_int),
    "content": CONTENT,
}))
