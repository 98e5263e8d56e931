"""Readout heads: parity with the official pooling modules (data-driven from the fixture manifests), shapes,
and the user errors of `build_head`."""

import ast
import json
from pathlib import Path

import pytest
import torch

from harness.heads.head import build_head
from harness.heads.kinds import NotApplicable, kinds
from harness.heads.pool.abmilp import sincos_pos_embed_2d
from harness.errors import HarnessError
from harness.registry import AggregatorEntry, load_registry
from conftest import manifests

KINDS = ("cls", "mean", "abmilp", "query", "ep")


def _entry(kind: str) -> AggregatorEntry:
    return load_registry().aggregator(kind)


def _constructor(manifest: dict) -> tuple[str, dict]:
    """The class name and keywords of the manifest's constructor call (non-literals such as nn.LayerNorm as text)."""
    call = ast.parse(manifest["constructor"], mode="eval").body
    kwargs = {}
    for kw in call.keywords:
        try:
            kwargs[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            kwargs[kw.arg] = ast.unparse(kw.value)
    return call.func.id, kwargs


# Per kind: official constructor keywords -> (embed_dim, num_heads, options, num_classes), and official
# parameter names -> ours. Each raises on a setting the project does not reproduce, so no fixture is half-checked.


def _abmilp_settings(kw: dict) -> tuple[int, int, dict, int]:
    opts = {"self_attention": kw["self_attention_apply_to"], "activation": kw["activation"], "depth": kw["depth"],
            "cond": kw["cond"] or "none", "content": kw["content"]}
    return kw["dim"], 1, opts, 10


def _query_settings(kw: dict) -> tuple[int, int, dict, int]:
    assert kw.get("qkv_bias", True) and kw.get("complete_block", True)
    assert kw.get("norm_layer", "nn.LayerNorm") == "nn.LayerNorm"
    opts = {"num_queries": kw.get("num_queries", 1), "depth": kw["depth"], "mlp_ratio": kw["mlp_ratio"]}
    return kw["embed_dim"], kw["num_heads"], opts, kw.get("num_classes", 10)


def _ep_settings(kw: dict) -> tuple[int, int, dict, int]:
    assert kw["num_heads"] == 1 and kw["qk_scale"] is None
    return kw["dim"], 1, {"num_queries": kw["num_queries"], "d_out": kw["d_out"], "qkv_bias": kw["qkv_bias"]}, 10


def _map_abmilp(sd: dict, head) -> dict:
    side = sd["pos_embed"].shape[1]
    prefix = 1 if head.pooler.skip == 0 else 0  # official table has a zero [cls] row when content != "patch"
    torch.testing.assert_close(sincos_pos_embed_2d(sd["pos_embed"].shape[2], side - prefix, prefix), sd["pos_embed"],
                               rtol=0, atol=1e-6)
    return {"pooler." + k: v for k, v in sd.items() if k != "pos_embed"}


def _map_query(sd: dict, head) -> dict:
    out = {}
    for key, value in sd.items():
        if ".xattn.proj." in key:  # stored by the official module, never applied in its forward
            continue
        key = key.replace("pooler.", "").replace("cross_attention_block.", "").replace("xattn.", "")
        out[key if key.startswith("linear.") else "pooler." + key] = value
    return out


def _map_ep(sd: dict, head) -> dict:
    return {"pooler." + {"cls_token": "queries"}.get(k, k): v for k, v in sd.items()}


# Efficient probing's other poolings (aggregators/<kind>/, billpsomas/efficient-probing probe_heads defaults):
# the sizes come from the constructor, every setting the kind fixes is asserted, the names are the official ones.


def _fixed(kw: dict, **want) -> None:
    for key, value in want.items():
        assert kw.get(key, value) == value, f"{key}={kw.get(key)!r}: not the efficient-probing factory's {value!r}"


def _simpool_settings(kw: dict) -> tuple[int, int, dict, int]:
    _fixed(kw, num_heads=1, qkv_bias=False, qk_scale=None, gamma=None, use_beta=False)
    return kw["dim"], 1, {}, 10


def _esimpool_settings(kw: dict) -> tuple[int, int, dict, int]:
    _fixed(kw, num_heads=12, qk_scale=None, gamma=None, use_beta=False)
    return kw["dim"], 1, {}, 10


def _clip_settings(kw: dict) -> tuple[int, int, dict, int]:
    _fixed(kw, num_heads=4, qkv_bias=True, out_features=None, embed_dim=None)
    return kw["in_features"], 1, {"feat_size": kw["feat_size"]}, 10


def _siglip_settings(kw: dict) -> tuple[int, int, dict, int]:
    _fixed(kw, num_heads=8, mlp_ratio=4.0, qkv_bias=True, qk_norm=False, latent_len=1, latent_dim=None,
           out_features=None, embed_dim=None, pos_embed="", pool_type="token", norm_layer=None)
    return kw["in_features"], 1, {}, 10


def _aim_settings(kw: dict) -> tuple[int, int, dict, int]:
    _fixed(kw, qkv_bias=False, qk_scale=None, num_queries=1)
    return kw["dim"], 1, {"num_heads": kw["num_heads"]}, 10


def _cbam_settings(kw: dict) -> tuple[int, int, dict, int]:
    _fixed(kw, rd_ratio=0.0625, rd_channels=None, rd_divisor=1, spatial_kernel_size=7, act_layer="nn.ReLU",
           gate_layer="sigmoid", mlp_bias=False, output_size=1)
    return kw["channels"], 1, {}, 10


def _coca_settings(kw: dict) -> tuple[int, int, dict, int]:
    _fixed(kw, context_dim=None, dim_head=64, heads=8, parallel_ff=False, norm_context=False)
    return kw["dim"], 1, {"num_queries": kw["num_img_queries"]}, 10


def _cait_settings(kw: dict) -> tuple[int, int, dict, int]:
    _fixed(kw, num_heads=4, iterations=1, qkv_bias=True, qk_scale=None, mlp_ratio_clstk=4.0)
    return kw["embed_dim"], 1, {}, 10


def _dinovit_settings(kw: dict) -> tuple[int, int, dict, int]:
    _fixed(kw, num_heads=8)
    return kw["d_model"], 1, {}, 10


def _jepa_settings(kw: dict) -> tuple[int, int, dict, int]:
    _fixed(kw, num_queries=1, mlp_ratio=4.0, depth=1, qkv_bias=True, complete_block=True)
    return kw["embed_dim"], 1, {"num_heads": kw["num_heads"]}, 10


def _dolg_settings(kw: dict) -> tuple[int, int, dict, int]:
    _fixed(kw, act_fn="relu", with_aspp=False, bn_eps=1e-5, bn_nom=0.1)
    assert kw["s3_dim"] == kw["in_c"]
    return kw["in_c"], 1, {}, 10


def _cae_settings(kw: dict) -> tuple[int, int, dict, int]:
    _fixed(kw, num_heads=8, qkv_bias=False, qk_scale=None, attn_head_dim=None)
    return kw["dim"], 1, {}, 10


def _map_official_names(sd: dict, head) -> dict:
    return {"pooler." + k: v for k, v in sd.items()}


def _map_jepa(sd: dict, head) -> dict:
    return {"pooler." + k.replace("cross_attention_block.", "").replace("xattn.", ""): v for k, v in sd.items()}


def _map_cae(sd: dict, head) -> dict:  # norm2_cross: built by the official module, never used in its forward
    return {"pooler." + k: v for k, v in sd.items() if not k.startswith("norm2_cross.")}


SETTINGS = {"abmilp": _abmilp_settings, "query": _query_settings, "ep": _ep_settings,
            "simpool": _simpool_settings, "esimpool": _esimpool_settings, "clip": _clip_settings,
            "siglip": _siglip_settings, "aim": _aim_settings, "cbam": _cbam_settings, "coca": _coca_settings,
            "cait": _cait_settings, "dinovit": _dinovit_settings, "jepa": _jepa_settings, "dolg": _dolg_settings,
            "cae": _cae_settings}
MAPPERS = {"abmilp": _map_abmilp, "query": _map_query, "ep": _map_ep, "jepa": _map_jepa, "cae": _map_cae,
           **{k: _map_official_names for k in ("simpool", "esimpool", "clip", "siglip", "aim", "cbam", "coca",
                                                "cait", "dinovit", "dolg")}}
OUTPUTS = ("pooled", "attn", "logits", "pooled_all_tokens", "attn_all_tokens", "pooled_train_mode",
           "attn_train_mode", "pooled_all_tokens_train_mode")


def _content(manifest: dict, kw: dict, output: str) -> dict:
    """Which tokens the official module saw for this output, as the `content` option: patch tokens only, or all
    of them; nothing for a kind that reads patch tokens only (clip, cbam, dolg: their `_all` fails officially)."""
    if "content" not in kinds()[manifest["aggregator"]].options:
        return {}
    if "all_tokens" in output:
        return {"content": "all"}
    if "tokens[:, 1:]" in manifest["call"]:
        return {"content": "patch"}
    return {"content": kw.get("content", "all")}


@pytest.mark.parity
@pytest.mark.parametrize("path", manifests("aggregator"), ids=lambda p: p.parent.name)
def test_parity_with_official_module(path: Path):
    manifest = json.loads(path.read_text())
    kind = manifest["aggregator"]
    _, kw = _constructor(manifest)
    embed_dim, num_heads, opts, num_classes = SETTINGS[kind](kw)
    weights = torch.load(path.parent / "weights.pt", weights_only=True)
    io = torch.load(path.parent / "io.pt", weights_only=True)
    tokens, tol = io["tokens"], manifest["tolerance"]
    outputs = [k for k in OUTPUTS if k in io]
    assert "pooled" in outputs and set(io) == {"tokens", *outputs}, sorted(io)
    for output in outputs:
        head = build_head(_entry(kind), embed_dim=embed_dim, num_heads=num_heads, num_prefix_tokens=1,
                          num_classes=num_classes, options={**opts, **_content(manifest, kw, output)})
        state = MAPPERS[kind](weights, head)
        own_linear = {k: v for k, v in head.state_dict().items() if not k.startswith("pooler.")}
        head.load_state_dict({**own_linear, **state}, strict=True)
        head.train("train_mode" in output)  # an inner BatchNorm on this batch's statistics, else the running ones
        with torch.no_grad():
            if output.startswith("attn"):
                got = head.pooler.forward_with_attn(tokens)[1]
            elif output == "logits":
                got = head(tokens)
            else:
                got = head.pool(tokens)
        assert got.shape == io[output].shape, output
        err = (got - io[output]).abs().max().item()
        assert err <= tol, f"{path.parent.name}/{output}: max abs err {err:.3g} > {tol}"


def test_every_aggregator_kind_has_a_parity_fixture():
    covered = {json.loads(p.read_text())["aggregator"] for p in manifests("aggregator")}
    assert {"abmilp", "query", "ep"} <= covered


def _direct_query_pool(pooler, tokens: torch.Tensor) -> torch.Tensor:
    """The official cross-attention written out: K and V projected on every token, then attention per head."""
    xn = pooler.norm1(tokens[:, pooler.skip:])
    b, n_q, dim = tokens.shape[0], pooler.query_tokens.shape[1], tokens.shape[-1]
    h = pooler.num_heads
    k, v = pooler.kv(xn).view(b, -1, 2, h, dim // h).permute(2, 0, 3, 1, 4)
    q = pooler.q(pooler.query_tokens.expand(b, -1, -1)).view(b, n_q, h, -1).transpose(1, 2)
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n_q, dim)
    out = pooler.query_tokens + y
    return (out + pooler.mlp(pooler.norm2(out))).flatten(1)


def _direct_ep_pool(pooler, tokens: torch.Tensor) -> torch.Tensor:
    """The official EfficientProbing forward: values projected on every token, each query reads its own slice."""
    x = tokens[:, pooler.skip:]
    b, n, dim = x.shape
    n_q = pooler.queries.shape[1]
    attn = (pooler.queries * dim ** -0.5 @ x.transpose(1, 2)).softmax(-1)  # (B, Q, N)
    v = pooler.v(x).view(b, n, n_q, -1).permute(0, 2, 1, 3)  # (B, Q, N, D/(d_out Q))
    return (attn.unsqueeze(2) @ v).reshape(b, -1)


@pytest.mark.parametrize("kind,options,direct", [
    ("query", {"num_queries": 3, "num_heads": 4}, _direct_query_pool),
    ("ep", {"num_queries": 8, "d_out": 2, "qkv_bias": True}, _direct_ep_pool),
])
def test_folded_projections_match_the_direct_computation(kind: str, options: dict, direct):
    """The fixtures cover one query (query) and d_out 1 (ep); the folding must hold for every setting."""
    head = build_head(_entry(kind), embed_dim=32, num_heads=4, num_prefix_tokens=1, num_classes=3, options=options)
    with torch.no_grad():
        for p in head.pooler.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        tokens = torch.randn(2, 17, 32)
        torch.testing.assert_close(head.pool(tokens), direct(head.pooler, tokens), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tokens_dim_heads_prefix", [(5, 16, 2, 1), (17, 32, 4, 1), (16, 24, 3, 0), (10, 48, 6, 2)])
def test_shapes_and_gradients(kind: str, tokens_dim_heads_prefix: tuple[int, int, int, int]):
    t, d, h, prefix = tokens_dim_heads_prefix
    kwargs = dict(embed_dim=d, num_heads=h, num_prefix_tokens=prefix, num_classes=7)
    if kind == "cls" and prefix == 0:
        with pytest.raises(NotApplicable):
            build_head(_entry(kind), **kwargs)
        return
    head = build_head(_entry(kind), **kwargs)
    assert head.tap == _entry(kind).tap
    tokens = torch.randn(3, t, d, requires_grad=True)
    pooled, logits = head.pool(tokens), head(tokens)
    expected_dim = d * (_entry(kind).options.get("num_queries", 1) if kind == "query" else 1)
    assert pooled.shape == (3, expected_dim) and logits.shape == (3, 7)
    assert all(p.dtype == torch.float32 for p in head.parameters())
    logits.sum().backward()
    assert torch.isfinite(tokens.grad).all()
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)


@pytest.mark.parametrize("kind,options,pooled_dim", [
    ("abmilp", {"self_attention": "both", "depth": 2, "activation": "tanh", "content": "all"}, 32),
    ("abmilp", {"self_attention": "map", "cond": "pe"}, 32),
    ("query", {"num_queries": 3, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}, 96),
    ("ep", {"num_queries": 8, "d_out": 2, "qkv_bias": True, "content": "all"}, 16),
])
def test_option_variants(kind: str, options: dict, pooled_dim: int):
    head = build_head(_entry(kind), embed_dim=32, num_heads=4, num_prefix_tokens=1, num_classes=5, options=options)
    tokens = torch.randn(2, 17, 32)
    assert head.pool(tokens).shape == (2, pooled_dim) and head(tokens).shape == (2, 5)


def test_prefix_tokens_are_excluded_unless_asked():
    tokens = torch.randn(2, 9, 16)
    changed = tokens.clone()
    changed[:, 0] += 5.0
    for kind in ("mean", "abmilp", "query", "ep"):
        head = build_head(_entry(kind), embed_dim=16, num_heads=2, num_prefix_tokens=1, num_classes=3).eval()
        torch.testing.assert_close(head.pool(tokens), head.pool(changed))
    head = build_head(_entry("ep"), embed_dim=16, num_heads=2, num_prefix_tokens=1, num_classes=3,
                      options={"content": "all"})
    assert not torch.allclose(head.pool(tokens), head.pool(changed))


def test_cls_and_mean_read_the_right_tokens():
    tokens = torch.randn(2, 5, 8)
    cls = build_head(_entry("cls"), embed_dim=8, num_heads=1, num_prefix_tokens=1, num_classes=3)
    mean = build_head(_entry("mean"), embed_dim=8, num_heads=1, num_prefix_tokens=1, num_classes=3)
    torch.testing.assert_close(cls.pool(tokens), tokens[:, 0])
    torch.testing.assert_close(mean.pool(tokens), tokens[:, 1:].mean(1))
    assert isinstance(cls.norm, torch.nn.BatchNorm1d) and not cls.norm.affine and cls.norm.eps == 1e-6
    assert cls.linear.bias.abs().max() == 0 and cls.linear.weight.std() < 0.02


# ---------------------------------------------------------------------------------------------- errors


def test_cls_without_prefix_tokens_is_not_applicable():
    with pytest.raises(NotApplicable, match="cls"):
        build_head(_entry("cls"), embed_dim=16, num_heads=2, num_prefix_tokens=0, num_classes=3)


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_option_names_option_and_accepted(kind: str):
    with pytest.raises(HarnessError, match="unknown option 'deph'") as err:
        build_head(_entry(kind), embed_dim=16, num_heads=2, num_prefix_tokens=1, num_classes=3, options={"deph": 2})
    assert "grid options" in str(err.value)
    accepted = str(err.value).split("accepted:")[1]
    for name in _entry(kind).options:
        assert name in accepted


@pytest.mark.parametrize("kind,options,fragment", [
    ("abmilp", {"activation": "gelu"}, "'relu' or 'tanh'"),
    ("query", {"num_heads": 3}, "divisor"),
    ("ep", {"num_queries": 5}, "num_queries dividing"),
    ("query", {"depth": 0}, "positive integer"),
])
def test_bad_option_values_are_user_errors(kind: str, options: dict, fragment: str):
    with pytest.raises(HarnessError, match=fragment):
        build_head(_entry(kind), embed_dim=16, num_heads=2, num_prefix_tokens=1, num_classes=3, options=options)


def test_bad_registered_option_names_the_registry_file():
    entry = AggregatorEntry(name="broken", kind="ep", tap="prenorm", options={"d_out": 0}, defined_in="aggs.toml")
    with pytest.raises(HarnessError, match=r"'broken' \(aggs.toml\): option 'd_out' is 0"):
        build_head(entry, embed_dim=16, num_heads=2, num_prefix_tokens=1, num_classes=3)


def test_positional_conditioning_needs_a_square_grid():
    head = build_head(_entry("abmilp"), embed_dim=16, num_heads=2, num_prefix_tokens=1, num_classes=3,
                      options={"cond": "pe"})
    with pytest.raises(HarnessError, match="square patch grid"):
        head(torch.randn(2, 7, 16))


# ------------------------------------------------------------------------- efficient probing's other poolings

EP_POOLINGS = ("simpool", "esimpool", "clip", "siglip", "aim", "cbam", "coca", "cait", "dinovit", "jepa", "dolg",
               "cae")


@pytest.mark.parametrize("kind", EP_POOLINGS)
@pytest.mark.parametrize("side,width,prefix", [(4, 48, 1), (5, 96, 0), (3, 24, 2)])
def test_efficient_probing_poolings_shapes_and_gradients(kind: str, side: int, width: int, prefix: int):
    options = {"feat_size": side} if kind == "clip" else {}
    if kind in ("aim", "jepa") and width % 16:
        options["num_heads"] = 8
    if kind == "esimpool" and width % 12:
        with pytest.raises(HarnessError, match="divisible by 12"):
            build_head(_entry(kind), embed_dim=width, num_heads=4, num_prefix_tokens=prefix, num_classes=7)
        return
    head = build_head(_entry(kind), embed_dim=width, num_heads=4, num_prefix_tokens=prefix, num_classes=7,
                      options=options)
    tokens = torch.randn(3, prefix + side * side, width, requires_grad=True)
    pooled, logits = head.pool(tokens), head(tokens)
    assert pooled.shape == (3, width) and logits.shape == (3, 7)
    logits.sum().backward()
    assert torch.isfinite(tokens.grad).all()
    never_read = {"pooler.blocks_token_only.0.attn.k.bias",  # cait's key bias and cae's key-norm shift: they
                  "pooler.norm1_k.bias"}  # move every score equally, so they cancel in the softmax (zero gradient)
    assert all(p.grad is not None for n, p in head.named_parameters() if n not in never_read)


@pytest.mark.parametrize("kind", ["aim", "cbam", "dolg"])
def test_an_inner_batchnorm_moves_its_running_statistics_in_training_only(kind: str):
    head = build_head(_entry(kind), embed_dim=32, num_heads=4, num_prefix_tokens=1, num_classes=3,
                      options={"num_heads": 8} if kind == "aim" else {})
    tokens = torch.randn(4, 17, 32) * 3 + 1
    before = {k: v.clone() for k, v in head.pooler.named_buffers()}
    with torch.no_grad():
        head.eval()(tokens)
        assert all(torch.equal(v, before[k]) for k, v in head.pooler.named_buffers())
        head.train()(tokens)
    assert any(not torch.equal(v, before[k]) for k, v in head.pooler.named_buffers() if "running" in k)


@pytest.mark.parametrize("kind,width,patches,fragment", [
    ("clip", 32, 15, "exactly 16 patch tokens"),
    ("cbam", 32, 15, "square grid"),
    ("dolg", 32, 12, "square grid"),
])
def test_size_constraints_are_user_errors(kind: str, width: int, patches: int, fragment: str):
    head = build_head(_entry(kind), embed_dim=width, num_heads=4, num_prefix_tokens=1, num_classes=3,
                      options={"feat_size": 4} if kind == "clip" else {})
    with pytest.raises(HarnessError, match=fragment):
        head(torch.randn(2, 1 + patches, width))


def test_kinds_whose_all_variant_fails_officially_have_no_content_option():
    assert not {"clip", "cbam", "dolg"} & {k for k in EP_POOLINGS if "content" in kinds()[k].options}
    with pytest.raises(HarnessError, match="unknown option 'content'"):
        build_head(_entry("cbam"), embed_dim=16, num_heads=2, num_prefix_tokens=1, num_classes=3,
                   options={"content": "all"})
