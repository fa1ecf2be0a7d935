import numpy as np
import pytest

from data import soundfont
from data.note_instruments import (DRUM_KITS, FLUIDR3, NOTE_BY_NUMBER, NOTE_INSTRUMENTS, TIMGM6MB, DrumKit,
                                   NoteInstrument, fluidr3_soundfont, shared_recordings)
from data.nsynth import render_soundfont as renderer
from data.sf2_tables import read_tables
from data.soundfont import (BANK, BY_PROGRAM, DRUM_FAMILY, GM_KITS, GM_PROGRAMS, PLAYED, PROBE, PhraseNote,
                            default_soundfont, is_silent, programs_for, render_note, render_phrase)
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
    # How each program is played is written for every mapped program, and agrees with the GM names.
    assert set(PLAYED) == set(BY_PROGRAM)
    assert (PLAYED[0], PLAYED[6], PLAYED[40], PLAYED[45], PLAYED[21], PLAYED[22], PLAYED[62]) == (
        "struck", "plucked", "bowed", "plucked", "bellows", "blown", "synthesized")
    assert {sound for _, sound in GM_KITS.values()} == {"acoustic", "electronic"} and GM_KITS[25][0] == "TR-808"


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
    # Another kit (GM_KITS; 25 is the TR-808) sounds different on the same keys.
    assert not np.allclose(drums, render_phrase(timgm, [], groove, seconds=1.5, drums=True, kit=25))


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


# -- recordings: the probes' notes share none with the bank, nor between instruments (read from the .sf2) --------

def _default_plan_keys():
    plan = renderer.planned_examples(renderer.chosen_programs(None), renderer.DEFAULT_PITCH_STEP,
                                     renderer.DEFAULT_VELOCITIES, renderer.DEFAULT_DYAD_VELOCITY)
    return renderer.played_keys(plan)


def test_sample_tables_know_timgm6mb_reuses_recordings(timgm):
    tables = read_tables(timgm)
    recordings = {program: tables.recordings(tables.sample_indices(0, program)) for program in (0, 1, 40, 41, 110)}
    # The documented reuse (FACTS.md): Piano 1 = Piano 2; Violin, Viola and Fiddle share samples.
    assert recordings[0] & recordings[1] and recordings[40] & recordings[41] & recordings[110]
    assert not recordings[0] & recordings[40]
    # A key outside a zone sounds none of its samples: the trumpet's low zones are not the high ones.
    low, high = tables.sample_indices(0, 56, 55, 100), tables.sample_indices(0, 56, 84, 100)
    assert low and high and low != high
    assert tables.preset_name(0, 0) and tables.sample_indices(128, 0)


def test_probe_notes_share_no_recording_with_the_bank_or_between_instruments(timgm):
    fluidr3 = fluidr3_soundfont()
    paths = {TIMGM6MB: timgm, FLUIDR3: fluidr3}
    keys = _default_plan_keys()
    assert shared_recordings(keys, paths, timgm) is None
    # The same claim computed here from the tables, independently of shared_recordings.
    timgm_tables, fluid_tables = read_tables(timgm), read_tables(fluidr3)
    bank = set(timgm_tables.recordings(timgm_tables.sample_indices(128, 0)))
    for entry in programs_for(BANK):
        bank |= timgm_tables.recordings(timgm_tables.sample_indices(0, entry.program))
    seen = {}
    assert set(DRUM_KITS) <= set(keys)  # the mixes' drum parts are checked like every note
    for instrument, pressed in keys.items():
        tables = fluid_tables if instrument.soundfont == FLUIDR3 else timgm_tables
        bank_number = 128 if isinstance(instrument, DrumKit) else 0
        played = set()
        for key, velocity in pressed:
            played |= tables.recordings(tables.sample_indices(bank_number, instrument.program, key, velocity))
        assert played, instrument
        assert not played & bank, instrument
        for recording in played:
            assert seen.setdefault(recording, instrument) == instrument, (seen[recording], instrument)


def test_a_note_instrument_sharing_recordings_is_named(timgm):
    paths = {TIMGM6MB: timgm, FLUIDR3: fluidr3_soundfont()}
    piano = NoteInstrument(TIMGM6MB, 0, BY_PROGRAM[0])  # TimGM6mb's Piano 1 is the bank's Piano 2
    conflict = shared_recordings({piano: [(60, 100)]}, paths, timgm)
    assert conflict and "bank" in conflict and "128" in conflict
    # FluidR3's Piano 2 plays Piano 1's recordings: two note instruments may not.
    grand, bright = NOTE_BY_NUMBER[0], NoteInstrument(FLUIDR3, 1, BY_PROGRAM[1])
    conflict = shared_recordings({grand: [(60, 100)], bright: [(60, 100)]}, paths, timgm)
    assert conflict and "common recording" in conflict
    # FluidR3's kits share most samples: the Room kit's snare is the Standard kit's.
    standard, room = DRUM_KITS[0], DrumKit(FLUIDR3, 8, (36, 38, 42))
    conflict = shared_recordings({standard: [(38, 100)], room: [(38, 100)]}, paths, timgm)
    assert conflict and "common recording" in conflict and "kit" in conflict


def test_note_instruments_cover_every_family_from_both_soundfonts():
    assert len({instrument.number for instrument in NOTE_INSTRUMENTS}) == len(NOTE_INSTRUMENTS)
    for instrument in NOTE_INSTRUMENTS:
        assert 0 <= instrument.number <= 999 and NOTE_BY_NUMBER[instrument.number] is instrument
        assert instrument.gm is BY_PROGRAM[instrument.program]
    for family in FAMILIES:
        members = [instrument for instrument in NOTE_INSTRUMENTS if instrument.family == family]
        # Stage 4 needs two test and (where the soundfonts allow) three or more train instruments.
        assert len(members) >= (4 if family == "vocal" else 6), family
        assert {instrument.soundfont for instrument in members} == {FLUIDR3, TIMGM6MB}, family
    # Drum kits: acoustic and electronic ones, numbered apart from the note instruments.
    assert {GM_KITS[kit.program][1] for kit in DRUM_KITS} == {"acoustic", "electronic"}
    assert all(NOTE_BY_NUMBER[kit.number] is kit and kit.number >= 256 for kit in DRUM_KITS)


def test_unreadable_sample_tables_are_input_errors(tmp_path):
    junk = tmp_path / "junk.sf2"
    junk.write_bytes(b"RIFF\x04\x00\x00\x00WAVE")
    with pytest.raises(InputError, match="not a SoundFont 2 file"):
        read_tables(junk)
    truncated = tmp_path / "truncated.sf2"
    truncated.write_bytes(default_soundfont().read_bytes()[:4096])
    with pytest.raises(InputError, match="no .* table"):
        read_tables(truncated)
    with pytest.raises(InputError, match="fluid-soundfont-gm"):
        fluidr3_soundfont(tmp_path / "FluidR3_GM.sf2")
