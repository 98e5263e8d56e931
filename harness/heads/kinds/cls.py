"""`cls`: the [cls] token (the MAE linear probe); not applicable to a backbone without one."""

from harness.heads.kinds import BATCHNORM, Kind, register

register(Kind(name="cls", pooler="harness.heads.pool.summary:build_cls", needs_cls=True, summary_only=True,
              options={"batchnorm": BATCHNORM}))
