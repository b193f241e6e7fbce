"""The committed stubs are what `make protos` generates from the .proto files."""

from __future__ import annotations

from offshelf.protos.generate import generate

from common import ROOT


def test_generated_stubs_are_up_to_date(tmp_path):
    fresh = generate(tmp_path)
    stale = [
        str(p.relative_to(tmp_path))
        for p in fresh
        if p.read_bytes() != (ROOT / "protos" / p.relative_to(tmp_path)).read_bytes()
    ]
    assert not stale, f"stale stubs {stale}: run `make protos` and commit the result"
