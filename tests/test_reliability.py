"""Every bad input of ``tests/reliability_cases.py`` through the real CLI: one line, the right status, no loss.

For each case: the exit status is the expected one (2 for bad input); stderr is exactly one line,
``error: <message>``, matching the case's pattern, with no traceback; and the case's ``after`` check
holds (the user's files unchanged, no final model or half-written file left behind, nothing a
malicious file asked for has run). ``docs/reliability.md`` is the table of these cases
(``.venv/bin/python tools/reliability_table.py`` rewrites it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # reliability_cases sits beside this file (any import mode)
from reliability_cases import CASES, TRACEBACK, problems, run_case


def _param(case):
    marks = []
    if case.xfail:
        marks.append(pytest.mark.xfail(reason=case.xfail, strict=False))
    if case.skip:
        marks.append(pytest.mark.skip(reason=case.skip))
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input(case, tmp_path):
    outcome = run_case(case, tmp_path)
    assert outcome.code == case.code, f"exit status {outcome.code}, expected {case.code}\n{outcome.stderr}"
    assert not TRACEBACK.search(outcome.stderr), f"a traceback on stderr:\n{outcome.stderr}"
    if case.code == 0:
        assert outcome.stderr.strip() == "", f"stderr is not empty:\n{outcome.stderr}"
    else:
        lines = outcome.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].strip(), f"stderr is not exactly one line:\n{outcome.stderr}"
    assert outcome.after_error is None, outcome.after_error
    assert problems(case, outcome) == [], outcome.stderr


def test_case_ids_are_unique_and_there_are_enough():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert len(CASES) >= 120


def test_every_expected_error_names_a_pattern():
    for case in CASES:
        if case.code != 0:
            assert case.expect, f"case {case.id!r} has no expected message"
