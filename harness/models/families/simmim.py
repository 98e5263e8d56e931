"""SimMIM (microsoft/SimMIM): timm's Beit with a shared relative position bias, layer scale, q/v biases and no
absolute position embedding."""

from harness.models.families import Family, StateDict, register


def convert(sd: StateDict) -> dict:
    """SimMIM `['model']`: keeps the `encoder.` sub-network; drops the decoder, the mask token (pre-training only)
    and the relative position index (a constant timm rebuilds)."""
    encoder = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    return {k: v for k, v in encoder.items() if k != "mask_token" and not k.endswith("relative_position_index")}


register(Family(name="simmim", convert=convert, arch_kwargs={
    "global_pool": "", "use_abs_pos_emb": False, "use_rel_pos_bias": False, "use_shared_rel_pos_bias": True,
    "init_values": 0.1}))
