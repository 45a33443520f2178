"""The test suite. Its folders mirror the packages: tests/trainer/ (with cli/, data/, loops/,
persistence/ and accelerator/) tests trainer/, tests/callbacks/ and tests/strategies/ the two installed
subpackages, tests/benchmarks/ and tests/examples/ those scripts, tests/packaging/ the wheel and the
shape of the source tree; helpers/ and fixtures/ serve them all."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository, for tests that read its files
