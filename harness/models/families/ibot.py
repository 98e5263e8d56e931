"""iBOT (bytedance/ibot): DINO's layout; its extracted backbone files wrap the state dict in `state_dict`."""

from harness.models.families import Family, StateDict, register
from harness.models.families.dino import convert as convert_dino


def convert(sd: StateDict) -> dict:
    """iBOT as DINO; also drops the student's `masked_embed` (the mask token, unused without a mask)."""
    return {k: v for k, v in convert_dino(sd).items() if k != "masked_embed"}


register(Family(name="ibot", convert=convert, released_layout=("state_dict",)))
