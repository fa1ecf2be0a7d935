"""Known answers for the one provenance rule (data.provenance.decide / commit) every stage follows."""
import json
import os

import pytest

from data.provenance import Provenance, begin, commit, decide
from data.stage import InputError

FIX = "rerun with --force"


def make(tmp_path, settings=None, inputs=None):
    return Provenance(sidecar=tmp_path / "out.json", outputs=[tmp_path / "out.npy"],
                      record={"inputs": inputs or {"index": "a" * 64}, "settings": settings or {"seed": 1}})


def finish(prov):
    for path in prov.outputs:
        path.write_bytes(b"x")
    commit(prov, extra={"n_rows": 3})


def test_fresh_directory_is_redone(tmp_path):
    assert decide(make(tmp_path), force=False, fix=FIX) is False


def test_done_when_sidecar_matches_and_outputs_exist(tmp_path):
    finish(make(tmp_path))
    # Tuples read back as lists: a fresh record with a tuple still matches.
    assert decide(make(tmp_path, settings={"seed": 1}), force=False, fix=FIX) is True
    assert json.loads((tmp_path / "out.json").read_text())["n_rows"] == 3


def test_tuple_and_list_settings_compare_equal(tmp_path):
    finish(make(tmp_path, settings={"steps": (1, 2)}))
    assert decide(make(tmp_path, settings={"steps": [1, 2]}), force=False, fix=FIX) is True


def test_redo_when_an_output_is_missing(tmp_path):
    prov = make(tmp_path)
    finish(prov)
    prov.outputs[0].unlink()
    assert decide(make(tmp_path), force=False, fix=FIX) is False


def test_refuse_other_settings_names_sidecar_and_first_key(tmp_path):
    finish(make(tmp_path))
    with pytest.raises(InputError) as caught:
        decide(make(tmp_path, settings={"seed": 2}), force=False, fix=FIX)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'out.json'}: ")
    assert "settings.seed=1" in message and "this run has 2" in message and message.endswith(FIX)


def test_refuse_other_inputs_shows_short_hashes(tmp_path):
    finish(make(tmp_path))
    with pytest.raises(InputError, match=r"inputs\.index='aaaaaaaaaaaa…', this run has 'bbbbbbbbbbbb…'"):
        decide(make(tmp_path, inputs={"index": "b" * 64}), force=False, fix=FIX)


def test_refuse_a_key_the_old_run_lacked(tmp_path):
    finish(make(tmp_path))
    with pytest.raises(InputError, match=r"settings\.dtype=<absent>, this run has 'fp16'"):
        decide(make(tmp_path, settings={"seed": 1, "dtype": "fp16"}), force=False, fix=FIX)


def test_refuse_even_when_outputs_are_missing(tmp_path):
    prov = make(tmp_path)
    finish(prov)
    prov.outputs[0].unlink()
    with pytest.raises(InputError):
        decide(make(tmp_path, settings={"seed": 2}), force=False, fix=FIX)


def test_force_redoes_and_begin_drops_the_stale_sidecar(tmp_path):
    finish(make(tmp_path))
    prov = make(tmp_path, settings={"seed": 2})
    assert decide(prov, force=True, fix=FIX) is False
    # decide writes nothing: a forced run that then stops on bad input has changed nothing.
    assert prov.sidecar.exists()
    begin(prov)
    # From the first output written until commit, nothing describes the outputs being rewritten.
    assert not prov.sidecar.exists()
    finish(prov)
    assert decide(make(tmp_path, settings={"seed": 2}), force=False, fix=FIX) is True


@pytest.mark.parametrize("text, what", [("[1, 2]", "JSON list"), ('{"inputs": {"ind', "not valid JSON"),
                                        ('"text"', "JSON str")])
def test_corrupt_sidecar_is_refused_blaming_the_sidecar(tmp_path, text, what):
    prov = make(tmp_path)
    finish(prov)
    prov.sidecar.write_text(text)
    with pytest.raises(InputError) as caught:
        decide(make(tmp_path), force=False, fix=FIX)
    message = str(caught.value)
    assert message.startswith(f"{prov.sidecar}: sidecar") and what in message and "out.npy" not in message
    assert "\n" not in message
    assert decide(make(tmp_path), force=True, fix=FIX) is False


def test_commit_is_last_and_atomic(tmp_path, monkeypatch):
    prov = make(tmp_path)
    with pytest.raises(RuntimeError, match="before its output"):
        commit(prov)
    assert not prov.sidecar.exists()
    for path in prov.outputs:
        path.write_bytes(b"x")
    # A commit that dies mid-write leaves neither a sidecar nor a temp file.
    real_replace = os.replace

    def dying_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(OSError):
        commit(prov)
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy"]
    commit(prov)
    assert json.loads(prov.sidecar.read_text()) == prov.record


def test_commit_extra_cannot_overwrite_the_record(tmp_path):
    prov = make(tmp_path)
    prov.outputs[0].write_bytes(b"x")
    with pytest.raises(RuntimeError, match="overwrite"):
        commit(prov, extra={"settings": {}})
