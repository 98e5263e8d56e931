"""Any timm model by its pretrained tag (`<model>.<tag>`, e.g. `vit_large_patch14_reg4_dinov2.lvd142m`): timm
builds it and loads its weights with its own checkpoint filter, from the Hugging Face hub cache (offline mode
respected) or a file given with --weights. Architecture, prefix tokens and input transform come from timm's
pretrained configuration (harness.registry.timm_configs). Such entries are loaded by timm, not checked against the
official code: no parity fixture covers them.
"""

from harness.models.families import Family, register

register(Family(name="timm", convert=dict, loader="harness.models.timm_weights:load",
                prefix_tokens=lambda entry: int(entry.class_token) + entry.register_tokens))
