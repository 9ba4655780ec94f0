"""Parameter counts: ``python -m models [--count ARCH ...] --input C H W --classes N``.

For each architecture of :data:`models.nets.ARCHITECTURES` (default: all), the deployed network's parameters
(:meth:`models.nets.SpikingNet.deploy`: no weak heads, no per-T BatchNorms; what papers quote) and the training
network's with its default weak head (``gap_linear`` at the default stage). Builds the models; runs no forward.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from models.nets import ARCHITECTURES, build_model, count_parameters


def parameter_counts(arch: str, in_channels: int, input_hw: tuple[int, int], n_classes: int) -> tuple[int, int]:
    """(deployed, with the default weak head) parameter counts of ``arch`` built for that input and class count."""
    net = build_model(arch, in_channels=in_channels, n_classes=n_classes, input_hw=input_hw)
    return count_parameters(net.deploy()), count_parameters(net)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__.splitlines()[0])
    parser.add_argument("--count", nargs="*", metavar="ARCH", help=f"architectures (default: all of {sorted(ARCHITECTURES)})")
    parser.add_argument("--input", nargs=3, type=int, metavar=("C", "H", "W"), required=True, help="input channels, height, width")
    parser.add_argument("--classes", type=int, required=True, help="number of classes")
    args = parser.parse_args(argv)
    c, h, w = args.input
    for arch in args.count or sorted(ARCHITECTURES):
        try:
            deployed, training = parameter_counts(arch, c, (h, w), args.classes)
        except ValueError as e:
            parser.error(str(e))
        spec = ARCHITECTURES[arch]
        print(f"{arch:14s} {c}x{h}x{w} {args.classes:5d} classes: {deployed:>12,} parameters deployed, "
              f"{training:>12,} with the weak head at {spec.default_weak} | {spec.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
