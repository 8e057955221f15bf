"""The judge answers a verdict request before the reference prefetches queued ahead of it, except the
reference that verdict needs (fib.harness.judge.Judge._next)."""
from collections import deque

from fib.harness.judge import Judge


def _judge(refs=()):
    j = object.__new__(Judge)  # only the bookkeeping _next reads
    j.refs = {k: None for k in refs}
    j.failed = {}
    return j


def _ref(key):
    return {"kind": "reference", "key": key}


def _verdict(key, id_):
    return {"kind": "judge", "ref_key": key, "id": id_}


def test_a_verdict_goes_before_queued_prefetches():
    j = _judge(refs=["a"])
    pending = deque([_ref("b"), _ref("c"), _verdict("a", 1)])
    assert j._next(pending) == _verdict("a", 1)
    assert [m["key"] for m in pending] == ["b", "c"]


def test_the_verdicts_own_reference_comes_first():
    j = _judge()
    pending = deque([_ref("b"), _ref("a"), _verdict("a", 1)])
    assert j._next(pending) == _ref("a")  # then the verdict, once "a" is among the references
    j.refs["a"] = None
    assert j._next(pending) == _verdict("a", 1)
    assert list(pending) == [_ref("b")]


def test_order_is_kept_otherwise():
    j = _judge(refs=["a"])
    pending = deque([_ref("b"), {"kind": "stop"}, _verdict("a", 1)])
    assert j._next(pending) == _ref("b")  # nothing jumps a stop
    j = _judge()
    pending = deque([_ref("b"), _verdict("z", 2)])  # its reference was never asked for: in order
    assert j._next(pending) == _ref("b")
    j = _judge()
    j.failed["z"] = "broken"
    pending = deque([_ref("b"), _verdict("z", 2)])  # a failed reference: the verdict answers at once
    assert j._next(pending) == _verdict("z", 2)


def test_vacuous_outputs_are_kept_in_the_reference_sidecar(tmp_path, monkeypatch):
    """The judge computes check.vacuous_outputs once per (reference, tolerance, check.py) and reads the
    sidecar after that; another tolerance is computed again, and the floor already in the sidecar stays."""
    import json
    from fib.harness import check, judge as judge_mod
    from fib.schema import Tolerance
    calls = []
    monkeypatch.setattr(check, "vacuous_outputs", lambda d, a, refs, tol: calls.append(tol.atol) or ["all zeros"])
    file = tmp_path / "ref.safetensors"
    meta = {"seconds": 1.0, "floor": {"record": {"bytes": 1}}}
    (tmp_path / "ref.json").write_text(json.dumps(meta))
    j = _judge()
    loose, strict = Tolerance(atol=1.0, rtol=0.3), Tolerance(atol=0.1, rtol=0.2)
    assert j._vacuous(None, {}, [], loose, file, meta) == ["all zeros"]
    stored = json.loads((tmp_path / "ref.json").read_text())
    assert stored["floor"] == {"record": {"bytes": 1}} and len(stored["vacuous"]) == 1
    assert j._vacuous(None, {}, [], loose, file, stored) == ["all zeros"]  # from the sidecar
    assert calls == [1.0]
    j._vacuous(None, {}, [], strict, file, stored)
    assert calls == [1.0, 0.1] and len(json.loads((tmp_path / "ref.json").read_text())["vacuous"]) == 2
    monkeypatch.setattr(judge_mod, "_check_source_hash", lambda: "another check.py")  # changed: computed again
    j._vacuous(None, {}, [], loose, file, stored)
    assert calls == [1.0, 0.1, 1.0]
