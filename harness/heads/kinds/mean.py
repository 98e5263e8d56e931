"""`mean`: the mean of the patch tokens, prefix tokens excluded."""

from harness.heads.kinds import BATCHNORM, Kind, register

register(Kind(name="mean", pooler="harness.heads.pool.summary:build_mean", summary_only=True,
              options={"batchnorm": BATCHNORM}))
