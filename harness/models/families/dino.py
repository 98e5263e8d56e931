"""DINO (facebookresearch/dino): timm's VisionTransformer; the released `*_pretrain.pth` is the bare teacher."""

from harness.models.families import Family, StateDict, drop_prefixes, register, strip_prefixes


def convert(sd: StateDict) -> dict:
    """DINO teacher (`backbone.*`) or student (`module.backbone.*`) of a full checkpoint, or the released
    backbone-only file (bare keys): the backbone, without the projection head."""
    return strip_prefixes(drop_prefixes(sd, ("head.", "module.head.")), ("module.backbone.", "backbone."))


register(Family(name="dino", convert=convert, released_layout=(None,)))
