"""Tests, mirroring the package tree (pipeline/<subpackage> -> tests/<subpackage>; stages/ -> tests/stages)."""
