import numpy as np
import pytest

from data import soundfont
from data.soundfont import (BANK, BY_PROGRAM, DRUM_FAMILY, GM_PROGRAMS, PROBE, PhraseNote, default_soundfont,
                            is_silent, programs_for, render_note, render_phrase)
from data.stage import InputError
from data.vocabulary import FAMILIES, SOURCES


@pytest.fixture(scope="module")
def timgm():
    return default_soundfont()


def test_default_soundfont_is_the_one_inside_pretty_midi():
    path = default_soundfont()
    assert path.name == "TimGM6mb.sf2" and path.parent.name == "pretty_midi" and path.stat().st_size > 1_000_000


def test_program_table_uses_nsynth_terms_and_sane_ranges():
    assert len({entry.program for entry in GM_PROGRAMS}) == len(GM_PROGRAMS)
    for entry in GM_PROGRAMS:
        assert 0 <= entry.program <= 127
        assert entry.family in FAMILIES and entry.source in SOURCES and entry.role in (PROBE, BANK)
        assert 0 <= entry.lowest < entry.highest <= 127
    # Spot checks a reader would make against the GM list.
    assert (BY_PROGRAM[0].family, BY_PROGRAM[0].source) == ("keyboard", "acoustic")
    assert (BY_PROGRAM[38].family, BY_PROGRAM[38].source) == ("bass", "synthetic")
    assert (BY_PROGRAM[56].family, BY_PROGRAM[65].family, BY_PROGRAM[73].family) == ("brass", "reed", "flute")
    assert (BY_PROGRAM[16].family, BY_PROGRAM[16].source) == ("organ", "electronic")
    for unmapped in (47, 55, 88, 95, 96, 103, 115, 127):
        assert unmapped not in BY_PROGRAM
    assert DRUM_FAMILY not in FAMILIES


def test_probe_and_bank_are_disjoint_and_each_covers_every_family():
    probe = {entry.program for entry in programs_for(PROBE)}
    bank = {entry.program for entry in programs_for(BANK)}
    assert probe and bank and not probe & bank
    assert probe | bank == set(BY_PROGRAM)
    for family in FAMILIES:
        assert programs_for(PROBE, family), family
        assert programs_for(BANK, family), family
        # Stage 4 splits probe instruments into train and test: every family needs two of them.
        assert len(programs_for(PROBE, family)) >= 2, family
    with pytest.raises(ValueError):
        programs_for("generator")


def test_render_note_shape_release_and_determinism(timgm):
    note = render_note(timgm, 0, 60, 100)
    assert note.dtype == np.float32 and note.shape == (64000,)
    assert not is_silent(note) and np.abs(note).max() <= 1.0
    # Held for 3 s then released: the last half second is much quieter than the held part.
    held_rms = np.sqrt(np.mean(note[16000:32000] ** 2))
    tail_rms = np.sqrt(np.mean(note[-8000:] ** 2))
    assert tail_rms < held_rms / 10
    # A render must not depend on what was rendered before it (a resumed render equals a fresh one).
    render_note(timgm, 81, 40, 127)
    assert np.array_equal(render_note(timgm, 0, 60, 100), note)
    assert render_note(timgm, 0, 60, 100, sample_rate=8000, seconds=1.0, hold_seconds=0.5).shape == (8000,)


def test_programs_sound_different(timgm):
    piano, trumpet = render_note(timgm, 0, 60, 100), render_note(timgm, 56, 60, 100)
    assert not np.allclose(piano, trumpet)


def test_soundfont_holes_are_detected(timgm):
    # FACTS.md: TimGM6mb's alto sax has no sample at E4.
    assert is_silent(render_note(timgm, 65, 64, 100))
    assert not is_silent(render_note(timgm, 65, 60, 100))
    assert is_silent(np.zeros(100, dtype=np.float32)) and is_silent(np.zeros(0, dtype=np.float32))


def test_render_phrase_parts_and_drums(timgm):
    melody = [PhraseNote(0.0, 0.4, 60, 100), PhraseNote(0.5, 0.4, 64, 100), PhraseNote(1.0, 0.4, 67, 100)]
    bass_line = [(0.0, 1.4, 36, 110, 1)]
    phrase = render_phrase(timgm, [0, 33], melody + bass_line, sample_rate=16000, seconds=2.0)
    assert phrase.dtype == np.float32 and phrase.shape == (32000,) and not is_silent(phrase)
    melody_only = render_phrase(timgm, [0, 33], melody, sample_rate=16000, seconds=2.0)
    assert not np.allclose(phrase, melody_only)
    # Nothing sounds before the first onset.
    late = render_phrase(timgm, [0], [(1.0, 0.5, 60, 100)], seconds=2.0)
    assert np.abs(late[:15000]).max() == 0.0 and not is_silent(late[16000:])
    # Default length: last release plus one second.
    assert render_phrase(timgm, [0], melody).shape == (int(round(2.4 * 16000)),)

    groove = [(0.0, 0.1, 36, 110), (0.25, 0.1, 42, 80), (0.5, 0.1, 38, 110), (0.75, 0.1, 42, 80)]
    drums = render_phrase(timgm, [], groove, seconds=1.5, drums=True)
    assert drums.shape == (24000,) and not is_silent(drums)
    assert np.array_equal(drums, render_phrase(timgm, [], groove, seconds=1.5, drums=True))


def test_render_phrase_rejects_bad_parts(timgm):
    with pytest.raises(ValueError):
        render_phrase(timgm, [0], [(0.0, 0.5, 60, 100, 1)])
    with pytest.raises(ValueError):
        render_phrase(timgm, [], [(0.0, 0.5, 60, 100)])
    with pytest.raises(ValueError):
        render_phrase(timgm, [0], [(0.0, 0.5, 36, 100)], drums=True)
    with pytest.raises(ValueError):
        render_note(timgm, 0, 60, 100, seconds=1.0, hold_seconds=2.0)


def test_bad_soundfont_paths_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not a soundfont"):
        soundfont.check_soundfont(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="not found"):
        soundfont.check_soundfont(tmp_path / "missing.sf2")
    broken = tmp_path / "broken.sf2"
    broken.write_bytes(b"RIFF\x00\x00")
    with pytest.raises(InputError, match="cannot load"):
        render_note(broken, 0, 60, 100)
