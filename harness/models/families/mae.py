"""MAE (facebookresearch/mae): timm's VisionTransformer as is."""

from harness.models.families import Family, StateDict, register


def convert(sd: StateDict) -> dict:
    """MAE `mae_pretrain_vit_*.pth['model']`: the encoder alone, already in timm's key names."""
    return dict(sd)


register(Family(name="mae", convert=convert))
