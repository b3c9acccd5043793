"""Provoke a NaN loss term on chosen training forward calls (the guard and EMA tests)."""

from __future__ import annotations

import hftrain.train as train_mod


def nan_in_loss_term(monkeypatch, term: str, bad_calls):
    """Make one loss term NaN (and so the loss) on the given training forward calls (1-based)."""
    real = train_mod.build_model
    calls = {"n": 0}

    def patched(*args, **kwargs):
        detector = real(*args, **kwargs)
        model = detector.model
        original = model.loss_function

        def loss_function(*a, **k):
            result = original(*a, **k)
            if not model.training:
                return result
            calls["n"] += 1
            loss, loss_dict = result[0], dict(result[1])
            if bad_calls(calls["n"]):
                loss_dict[term] = loss_dict[term] * float("nan")
                loss = loss + loss_dict[term]
            return (loss, loss_dict, *result[2:])

        model.loss_function = loss_function
        return detector

    monkeypatch.setattr(train_mod, "build_model", patched)
