"""`registers`: the mean of the register (storage) tokens, as CAPI reads them; not applicable without registers."""

from harness.heads.kinds import BATCHNORM, Kind, register

register(Kind(name="registers", pooler="harness.heads.pool.summary:build_registers", summary_only=True,
              options={"batchnorm": BATCHNORM}))
