"""How far each export format's logits are from okd_ray.load_model's: the README's tolerances come from here.

Trains tiny digits runs (every part kind: members, a tv: member, members on a trunk, PCL's temporal means, the
ensemble, FFL's and PCL's fused classifiers, ONE's teacher), exports every part in every format and runs each file
with its own library, as ``export_model`` reads it back, on the run's test images and on a seeded N(0, 1) batch.
Prints, per format, the largest absolute difference over the largest logit of the same batch (logits of briefly
trained nets on the digits reach 1e4), and the largest absolute difference.

    python experiments/export_tolerance.py [--out runs/export-tolerance]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import okd_ray
from okd_ray.config import load_config
from okd_ray.data import digits
from okd_ray.run import train
from okd_ray.trained.export import FORMATS, export_model
from okd_ray.trained.load import deployable, open_run

TINY = ["data.train_limit=256", "data.test_limit=256", "data.batch_size=32", "epochs=2"]
RUNS = {
    "ffl": ["method.name=ffl", "members=[cnn16, resnet8]"],
    "pcl-trunk": ["method.name=pcl", "members=[resnet8, resnet8]", "trunk_stages=2"],
    "one-trunk": ["method.name=one", "members=[resnet8, resnet8, resnet8]", "trunk_stages=2"],
    "dml-tv": ["method.name=dml", "members=[cnn16, 'tv:resnet18']"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/export-tolerance")
    args = parser.parse_args()
    out = Path(args.out)
    worst = {f: [0.0, 0.0] for f in FORMATS}  # largest relative difference, largest absolute difference
    for name, overrides in RUNS.items():
        run_dir = out / name
        if not (run_dir / "checkpoints").exists():
            train(load_config(None, [*TINY, *overrides]), run_dir=str(run_dir), quiet=True)
        images = okd_ray.load_transform(str(run_dir))(digits.load().test_images[:256])
        noise = torch.randn(64, *images.shape[1:], generator=torch.Generator().manual_seed(0))
        parts = [p for p, pid in deployable(open_run(str(run_dir)).config).items() if p == pid.key]
        for part in parts:
            model = okd_ray.load_model(str(run_dir), part)
            for format in FORMATS:
                folder = out / "exports" / name / part / format
                export_model(str(run_dir), part, format, str(folder))
                run = FORMATS[format].read(folder / FORMATS[format].file)  # as export_model reads it back
                with torch.no_grad():
                    for x in (images, noise):
                        want = model(x)
                        difference = (run(x) - want).abs().max().item()
                        relative = difference / want.abs().max().item()
                        worst[format] = [max(worst[format][0], relative), max(worst[format][1], difference)]
                        print(f"{name:10} {part:9} {format:12} {relative:.3g} {difference:.3g}", flush=True)
    print("\n| format | largest difference / largest logit | largest absolute difference |\n|---|---|---|")
    for format, (relative, difference) in worst.items():
        print(f"| {format} | {relative:.3g} | {difference:.3g} |")


if __name__ == "__main__":
    main()
