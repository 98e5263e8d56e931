"""`abmilp`: attention-based MIL pooling (Beyond [cls]), the official module's options."""

from harness.heads.kinds import CONTENT, Kind, Option, choice, positive_int, register

register(Kind(name="abmilp", pooler="harness.heads.pool.abmilp:build", options={
    "depth": Option(1, "a positive integer (Linear layers of the score predictor)", positive_int),
    "activation": choice("relu", "tanh"),
    "self_attention": choice("none", "map", "both"),
    "cond": choice("none", "pe"),
    "content": CONTENT,
}))
