"""Weighted k-NN on frozen features (DINO's `eval_knn.py`): nothing is trained, the training split votes.

Features are L2-normalised; a query's neighbours are the k training features of highest cosine similarity, each
voting for its label with weight exp(similarity / T). Every (k, T) of a group of heads comes from one neighbour
search for the largest k. The search runs over chunks of queries and of training features, keeping a running
top-k, so memory is O(query chunk x (train chunk + k)) whatever the split sizes: the full similarity matrix never
exists. Ties are broken the same way everywhere, so results are exact and reproducible: among equal similarities
the lower training index is the nearer neighbour, and among equal votes the lower class index ranks first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from harness.heads.bank import HeadOutcome, HeadSpec, head_input
from harness.heads.kinds import Dims, NotApplicable, kinds, resolve_options
from harness.tokens.cache import TokenSet
from harness.tokens.layers import layer_taps

QUERY_CHUNK = 1024
TRAIN_CHUNK = 16384  # a similarity chunk is QUERY_CHUNK x TRAIN_CHUNK float32: 64 MiB
FEATURE_CHUNK = 4096  # images pooled at a time when reading features out of the token cache


def pooled_features(tokens: Mapping[str, Tensor], taps: Sequence[str], pool: torch.nn.Module,
                    device: torch.device | str, chunk: int = FEATURE_CHUNK) -> Tensor:
    """(N, D') L2-normalised float32 features: `pool` on the taps' tokens (concatenated for several blocks),
    read `chunk` images at a time from the (memory-mapped, float16) token cache."""
    n = len(tokens[taps[0]])
    parts = []
    for start in range(0, n, chunk):
        batch = {t: tokens[t][start:start + chunk].to(device).float() for t in taps}
        parts.append(F.normalize(pool(head_input(batch, taps)), dim=-1))
    return torch.cat(parts)


def _best_positions(values: Tensor, k: int) -> Tensor:
    """(Q, k) positions, ascending, of every row's k best values: all above the row's k-th largest value, then the
    earliest of those equal to it (positions follow training indices, so ties go to the lower index)."""
    bound = values.topk(k, dim=1).values[:, -1:]
    keep = values > bound
    ties = values == bound
    crowded = (keep | ties).sum(1) > k  # rows where the bound value is shared beyond the k-th place
    keep |= ties & ~crowded[:, None]
    if crowded.any():
        need = k - keep[crowded].sum(1, keepdim=True)
        tied = ties[crowded]
        keep[crowded] = keep[crowded] | (tied & (tied.cumsum(1) <= need))
    return keep.nonzero()[:, 1].view(len(values), k)


def neighbours(train: Tensor, queries: Tensor, k: int, train_chunk: int = TRAIN_CHUNK) -> tuple[Tensor, Tensor]:
    """(similarities, training indices), both (Q, k), nearest first, of normalised `queries` among `train`.

    A running top-k over training chunks: the candidates of a chunk are the k kept so far (lower indices) followed
    by the chunk's similarities, so positions in that row order are training-index order."""
    k = min(k, len(train))
    best_v = queries.new_empty(len(queries), 0)
    best_i = torch.empty(len(queries), 0, dtype=torch.long, device=queries.device)
    for start in range(0, len(train), train_chunk):
        candidates = torch.cat([best_v, queries @ train[start:start + train_chunk].T], 1)
        kept = best_v.shape[1]
        pos = _best_positions(candidates, k) if candidates.shape[1] > k else \
            torch.arange(candidates.shape[1], device=queries.device).expand(len(queries), -1)
        earlier = best_i.gather(1, pos.clamp(max=max(kept - 1, 0))) if kept else pos
        best_v, best_i = candidates.gather(1, pos), torch.where(pos < kept, earlier, pos - kept + start)
    order = best_v.sort(dim=1, descending=True, stable=True).indices  # equal values keep ascending index
    return best_v.gather(1, order), best_i.gather(1, order)


def knn_rankings(train: Tensor, train_labels: Tensor, queries: Tensor, num_classes: int, ks: Iterable[int],
                 temperatures: Iterable[float], *, top: int = 5, query_chunk: int = QUERY_CHUNK,
                 train_chunk: int = TRAIN_CHUNK) -> dict[tuple[int, float], Tensor]:
    """(k, T) -> (Q, top) classes of every query, best first, by the summed exp(similarity / T) votes of its k
    nearest training features (votes in float64; equal votes rank the lower class first)."""
    ks, temperatures = sorted(set(ks)), sorted(set(temperatures))
    labels = train_labels.to(train.device)
    out: dict[tuple[int, float], list[Tensor]] = {(k, t): [] for k in ks for t in temperatures}
    for start in range(0, len(queries), query_chunk):
        sims, index = neighbours(train, queries[start:start + query_chunk], max(ks), train_chunk)
        voters = labels[index]
        for k in ks:
            for t in temperatures:
                weights = (sims[:, :k].double() / t).exp()
                votes = torch.zeros(len(sims), num_classes, dtype=torch.float64, device=sims.device)
                votes.scatter_add_(1, voters[:, :k], weights)
                ranking = votes.sort(dim=1, descending=True, stable=True).indices[:, :min(top, num_classes)]
                out[(k, t)].append(ranking.clone())  # a copy: the slice would keep the whole (Q, C) sort alive
    return {key: torch.cat(parts) for key, parts in out.items()}


def accuracy(ranking: Tensor, labels: Tensor, num_classes: int) -> tuple[float, float | None]:
    """Top-1 and top-5 accuracy (percent) of class rankings; top-5 None with 5 classes or fewer, as the bank's."""
    hits = ranking == labels.to(ranking.device)[:, None]
    n = max(len(labels), 1)
    return 100.0 * hits[:, 0].sum().item() / n, 100.0 * hits.any(1).sum().item() / n if num_classes > 5 else None


def knn_taps(specs: Sequence[HeadSpec], depth: int) -> list[tuple[str, str]]:
    """(aggregator kind, tap) of every block the k-NN heads read."""
    return [(s.aggregator.kind, tap) for s in specs for tap in layer_taps(s.layer, s.aggregator.tap, depth)]


def evaluate_knn(specs: Sequence[HeadSpec], train: TokenSet, val: TokenSet, test: TokenSet, *, dims: Callable[[int], Dims],
                 depth: int, num_classes: int, device: torch.device | str) -> list[HeadOutcome]:
    """Val and test accuracy of every k-NN head: one feature read and one neighbour search per (layer, source),
    shared by all of its (k, T) heads; `dims(num_blocks)` says what the features' pooling knows of the backbone."""
    outcomes = [HeadOutcome() for _ in specs]
    groups: dict[tuple, list[int]] = {}
    for i, spec in enumerate(specs):
        opts = resolve_options(spec.aggregator, spec.options)
        groups.setdefault((spec.layer, spec.aggregator.tap, opts["source"]), []).append(i)
    for (layer, tap, source), members in groups.items():
        taps = layer_taps(layer, tap, depth)
        first = specs[members[0]]
        try:
            pool, _ = kinds()[first.aggregator.kind].build_pooler(dims(len(taps)), {"source": source})
        except NotApplicable as e:
            for i in members:
                outcomes[i].status, outcomes[i].error = "not-applicable", f"aggregator {first.aggregator.name!r}: {e}"
            continue
        bank = pooled_features(train.tokens, taps, pool, device)
        labels = train.labels.to(device)
        heads = [(i, resolve_options(specs[i].aggregator, specs[i].options)) for i in members]
        ks, temperatures = {o["k"] for _, o in heads}, {o["T"] for _, o in heads}
        scores, rankings = [], {}
        for split in (val, test):
            rankings = knn_rankings(bank, labels, pooled_features(split.tokens, taps, pool, device), num_classes,
                                    ks, temperatures)
            scores.append({key: accuracy(r, split.labels, num_classes) for key, r in rankings.items()})
        for i, o in heads:
            key = (o["k"], o["T"])
            (v1, v5), (t1, t5) = scores[0][key], scores[1][key]
            outcomes[i] = HeadOutcome(val_top1=v1, val_top5=v5, test_top1=t1, test_top5=t5,
                                      test_predicted=rankings[key][:, 0].cpu())
    return outcomes
