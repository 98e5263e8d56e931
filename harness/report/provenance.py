"""Where a page came from, read from its rows alone (so a regeneration stays byte-identical): the harness
versions and commits that wrote them, the devices they ran on, the last row's date, and how many rows."""

from __future__ import annotations

import pandas as pd

PROVENANCE_COLUMNS = ("harness_version", "git_commit", "device", "ended_at")


def _values(results: pd.DataFrame, column: str) -> list[str]:
    if column not in results:
        return []
    return sorted({str(v) for v in results[column].dropna().unique() if str(v)})  # few distinct among many rows


def provenance_text(results: pd.DataFrame) -> str:
    """One sentence for a page's last line."""
    if results.empty:
        return "Made from no result rows."
    devices = sorted({d.split(" [", 1)[0] for d in _values(results, "device")})  # without Ray's node suffix
    commits = [c[:12] + ("-dirty" if c.endswith("-dirty") else "") for c in _values(results, "git_commit")]
    # one timestamp per trial: parse the distinct values, not every row
    ended = pd.to_datetime(pd.Series(results["ended_at"].dropna().unique()), utc=True).max() \
        if "ended_at" in results else None
    return (f"Made from {len(results)} result rows by harness {', '.join(_values(results, 'harness_version')) or '?'}"
            f" at commit {', '.join(commits) or 'unknown (no git checkout)'}, last row written "
            f"{ended.strftime('%Y-%m-%d %H:%M UTC') if ended is not None and not pd.isna(ended) else '?'}, on "
            f"{', '.join(devices) or 'unknown devices'}.")
