"""I-JEPA (facebookresearch/ijepa): timm's VisionTransformer without a [cls] token."""

from harness.models.families import Family, StateDict, register, strip_prefixes


def convert(sd: StateDict) -> dict:
    """I-JEPA `target_encoder` (or `encoder`, the context encoder) with DDP's `module.` removed; no [cls]."""
    return strip_prefixes(sd, ("module.",))


register(Family(name="ijepa", convert=convert,
                arch_kwargs={"class_token": False, "global_pool": "avg", "fc_norm": False}))
