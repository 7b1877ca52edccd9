"""Language tags as contacts and detectors report them ("ko", "ko-KR", "ko_KR", "KO")."""

from __future__ import annotations


def language_candidates(language: str) -> list[str]:
    """Lower-case tags to look a text up by, best first: the exact tag, then its primary
    subtag ("en-gb", then "en")."""
    tag = language.strip().replace("_", "-").lower()
    candidates = [tag] if tag else []
    primary = tag.split("-", 1)[0]
    if primary and primary != tag:
        candidates.append(primary)
    return candidates
