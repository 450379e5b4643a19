"""Body Part Examined as the standard codes it: PS3.16 Annex L, "Correspondence of Anatomic
Region Codes and Body Part Examined Defined Terms" (SNOMED CT codes, and whether the part is
paired, which decides whether a series must say its side).

The table is highdicom's copy of Annex L, read as a file: importing highdicom costs half a
second per process, and nothing else of it is needed here.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.util import find_spec
from pathlib import Path


@cache
def anatomic_regions() -> dict[str, tuple[str, str, str, bool]]:
    """Body Part Examined term -> (coding scheme, code value, code meaning, paired)."""
    spec = find_spec("highdicom")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / "_standard" / (
        "anatomic_regions.json")
    try:
        return {k: tuple(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError):
        return {}


def may_be_paired(body_part: str) -> bool:
    """Whether a series of this body part must carry Laterality (PS3.3 C.7.3.1, Type 2C:
    "required if the body part examined is a paired structure"): a paired part, no part, or
    a term Annex L does not define (it may be paired: the validator asks for the side)."""
    part = body_part.strip().upper()
    region = anatomic_regions().get(part)
    return not part or region is None or bool(region[3])
