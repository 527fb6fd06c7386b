"""The argument parser every command uses: a usage error is one line on stderr and exit code 2,
like every other bad input (argparse's own prints the usage block first)."""

import argparse
import sys


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
