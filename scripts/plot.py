"""Plot a run directory: python scripts/plot.py runs/demo [--out DIR]."""
import argparse

from red_megatron.plots import plot_run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run_dir")
    ap.add_argument("--out", default=None, help="folder for the PNGs (default: RUN_DIR/plots)")
    args = ap.parse_args(argv)
    for path in plot_run(args.run_dir, args.out):
        print(path)


if __name__ == "__main__":
    main()
