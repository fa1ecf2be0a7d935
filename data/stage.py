"""What every stage script shares: the data root, --force/--debug, and one-line errors people can act on."""
import argparse
import sys
import traceback
from pathlib import Path

from data.files import remove_stale_temp_files

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT / "data"


class InputError(Exception):
    """Bad input the user can fix. The message is one line: the file (and row), the rule broken, the fix."""


class StageArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one 'error: ' line (argparse's default prints the usage first)."""

    def error(self, message):
        self.exit(2, f"error: command line: {' '.join(message.split())} — see {self.prog} --help\n")


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = StageArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="artifact root; every stage reads and writes below it (see data/ARTIFACTS.md)")
    parser.add_argument("--force", action="store_true", help="redo work whose outputs already exist")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def run_stage(main, parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse args and call main(args). InputError -> 'error: ...' on stderr and exit 2, no traceback."""
    args = parser.parse_args(argv)
    try:
        data = getattr(args, "data", None)
        if data is not None and Path(data).is_dir():
            # Temp files of writers killed before their rename (a kill cannot clean up after itself).
            remove_stale_temp_files(data)
        main(args)
    except InputError as error:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished units are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


def main_exit(main, parser, argv=None) -> None:
    sys.exit(run_stage(main, parser, argv))
