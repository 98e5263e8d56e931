"""`knn`: DINO's weighted k-NN on L2-normalised features of a `source` (harness/heads/knn.py); trains nothing.

A grid may list several `k` and `T`: each combination is a head of its own, selected on validation like an lr.
"""

from harness.heads.kinds import Kind, Option, choice, positive_int, positive_number, register

KS, TEMPERATURES = [10, 20, 100, 200], [0.07, 0.1, 0.2]  # DINO's eval_knn.py reports k = 10, 20, 100, 200


def _one_or_list(valid):
    return lambda v: valid(v) or (isinstance(v, list) and bool(v) and all(valid(x) for x in v))


register(Kind(name="knn", pooler="harness.heads.pool.summary:build_source", summary_only=True, trained=False,
              options={
                  "k": Option(KS, "a positive integer, or a list of them (neighbours that vote)",
                              _one_or_list(positive_int)),
                  "T": Option(TEMPERATURES, "a positive number, or a list of them (the vote temperature)",
                              _one_or_list(positive_number)),
                  "source": choice("cls", "mean", "cls_mean", "registers"),
              }))
