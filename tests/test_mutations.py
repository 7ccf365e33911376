"""tests/mutations.py's planted bugs still fit the code: each pattern occurs exactly once in its file (a refactor
that moves or rewrites a line would otherwise turn its mutation into a skipped one). Whether each is CAUGHT is
`python tests/mutations.py`'s job (minutes; not part of the suite)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def planted() -> list:
    env = {}
    for node in ast.parse((ROOT / "tests" / "mutations.py").read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") in ("T_CORE", "T_ADD", "M"):
            exec(compile(ast.Module([node], []), "mutations.py", "exec"), env)
    return env["M"]


def test_every_planted_bug_still_fits_the_code():
    mutations = planted()
    assert len(mutations) >= 100 and len({name for name, _, _ in mutations}) == len(mutations)
    for name, edits, tests in mutations:
        for path, old, new in edits:
            assert (ROOT / path).read_text().count(old) == 1 and old != new, f"{name}: {path}"
        for t in tests.split():
            assert not t.startswith("tests/") or (ROOT / t).is_file(), f"{name}: {t}"
