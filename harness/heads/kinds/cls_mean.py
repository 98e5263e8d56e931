"""`cls_mean`: [cls] concatenated with the patch mean (DINOv2's `avgpool`); with several blocks, every block's [cls]
and the last block's patch mean."""

from harness.heads.kinds import BATCHNORM, Kind, register

register(Kind(name="cls_mean", pooler="harness.heads.pool.summary:build_cls_mean", needs_cls=True, summary_only=True,
              options={"batchnorm": BATCHNORM}))
