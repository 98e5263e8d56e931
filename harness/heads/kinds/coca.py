"""`coca`: CoCa's attention pooler, 196 learned queries (query 0 read out), one shared key/value head."""

from harness.heads.kinds import CONTENT, Kind, Option, positive_int, register

register(Kind(name="coca", pooler="harness.heads.pool.coca:build", options={
    "num_queries": Option(196, "a positive integer (only query 0 is read out, as officially)", positive_int),
    "content": CONTENT,
}))
