"""Command-line entry points: resunet-seg, resunet-bench, resunet-build, resunet-eval."""
