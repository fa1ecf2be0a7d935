"""NSynth-format note sets rendered from soundfonts (render_soundfont.py) and their quality rules."""
