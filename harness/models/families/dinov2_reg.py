"""DINOv2 with 4 registers (facebookresearch/dinov2 `*_reg4_pretrain.pth`): DINOv2's file layout plus
`register_tokens`, its position table resized by the `_reg` hub rule; tokens are [cls], 4 registers, patches."""

from harness.models.families import Family, register
from harness.models.families.dinov2 import convert, fitter

register(Family(name="dinov2_reg", convert=convert, released_layout=(None,), fit=fitter("dinov2_reg"),
                prefix_tokens=lambda entry: int(entry.class_token) + 4))
