"""Predict keypoints with a trained checkpoint: Kaggle submission and a figure of faces.

    python -m fkd_core.predict --checkpoint runs/cgd/best.pt --images test.csv \\
        --lookup IdLookupTable.csv --out submission.csv --plot predictions.png

Without ``--lookup`` every image x feature gets a row (RowId, ImageId, FeatureName, Location), in
the order of Kaggle's IdLookupTable. Locations are clipped to the image, [0, S].

    >>> from fkd_core.predict import load_model, predict, plot_predictions
    >>> model = load_model("runs/cgd/best.pt")
    >>> pred = predict(model, images)                      # uint8 [N, 1, S, S] -> [N, K, 2] px
    >>> plot_predictions(images, pred, target, path="faces.png", title="resnet18, mse")
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from fkd_core import api
from fkd_core.data import load_test_images
from fkd_core.models import KeypointNet, build_model, upgrade_state_dict
from fkd_core.schema import Schema, get_schema
from fkd_core.checkpoint import load_checkpoint
from fkd_core.device import resolve_device
from fkd_core.tta import flip_average

LOOKUP_COLUMNS = ("RowId", "ImageId", "FeatureName")


def model_from_state(state: dict[str, Any], device: str | torch.device = "cpu") -> KeypointNet:
    """Rebuild a checkpoint's model (no ImageNet file needed: the weights are in the state)."""
    cfg = state["config"]
    model = build_model(cfg["backbone"], state["num_keypoints"], dropout=cfg["dropout"],
                        mean_face=state["mean_face"], image_size=state["image_size"],
                        width=cfg.get("width", 1.0), depth=cfg.get("depth", 1),
                        head=cfg.get("head", "regression"), heatmap_size=cfg.get("heatmap_size", 24))
    model.load_state_dict(upgrade_state_dict(state["model"]))
    return model.to(device).eval()


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> KeypointNet:
    """The model of a checkpoint file (or of checkpoint.pt in a folder), in eval mode."""
    return load_state_and_model(checkpoint, device)[1]


def load_state_and_model(checkpoint: str | Path, device: str | torch.device = "cpu"
                         ) -> tuple[dict[str, Any], KeypointNet]:
    """A checkpoint's state and its model; a file that is no checkpoint, or whose entries do not
    rebuild a model (a config without a backbone, weights of another shape), is a one-line
    ValueError naming the file."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    try:
        return state, model_from_state(state, device)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        reason = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"{checkpoint}: its entries do not rebuild a model "
                         f"({type(err).__name__}: {reason})") from None


@torch.no_grad()
def predict(model: KeypointNet, images: Tensor, *, device: str | torch.device | None = None,
            batch_size: int = 256, flip_perm: list[int] | None = None) -> Tensor:
    """images uint8 [N, 1, S, S] -> keypoints float32 [N, K, 2] px, on the CPU.

    Runs where the model is, or moves the model to ``device`` when given. With flip_perm (the
    schema's flip_permutation()), each prediction is the flip average (fkd_core.tta).
    """
    if device is not None:
        model.to(device)
    model.eval()
    where = next(model.parameters()).device
    run = model if flip_perm is None else (lambda x: flip_average(model, x, flip_perm))
    out = [run(images[i:i + batch_size].to(where).float().div_(255.0)).float().cpu()
           for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.mean_face.shape[0], 2)


def _feature_index(schema: Schema) -> dict[str, tuple[int, int]]:
    """Kaggle column name -> (keypoint, axis)."""
    return {name: divmod(i, 2) for i, name in enumerate(schema.columns)}


def submission(pred: Tensor, image_ids: list[str], schema: Schema, image_size: int,
               lookup: pd.DataFrame | None = None, lookup_name: str = "lookup") -> pd.DataFrame:
    """Kaggle rows for pred [N, K, 2], Locations clipped to [0, image_size].

    With a lookup table (RowId, ImageId, FeatureName): RowId, Location, one row per lookup row.
    Without: RowId, ImageId, FeatureName, Location for every image x feature.
    """
    features = _feature_index(schema)
    named = lookup is None
    if named:
        lookup = pd.DataFrame([(img, name) for img in image_ids for name in schema.columns],
                              columns=["ImageId", "FeatureName"])
        lookup.insert(0, "RowId", np.arange(1, len(lookup) + 1))
    row_of = {str(img): i for i, img in enumerate(image_ids)}
    values = pred.clamp(0.0, float(image_size)).numpy()
    locations = np.empty(len(lookup))
    for n, (img, name) in enumerate(zip(lookup["ImageId"].astype(str), lookup["FeatureName"])):
        if img not in row_of:
            raise ValueError(f"{lookup_name}: row {n + 1}, column ImageId: {img!r} is not among the images")
        if name not in features:
            raise ValueError(f"{lookup_name}: row {n + 1}, column FeatureName: expected a "
                             f"{schema.name} column, got {name!r}")
        k, axis = features[name]
        locations[n] = values[row_of[img], k, axis]
    out = lookup[list(LOOKUP_COLUMNS) if named else ["RowId"]].copy()
    out["Location"] = locations
    return out


def plot_predictions(images: Tensor | np.ndarray, pred: Tensor | np.ndarray,
                     target: Tensor | np.ndarray | None = None, *, path: str | Path,
                     title: str = "", max_faces: int = 16, labels: list[str] | None = None) -> Path:
    """A grid of up to max_faces faces: predicted keypoints red, true ones green (if given).

    images: [N, 1, S, S] or [N, S, S] (uint8 or float in [0, 1]); pred, target: [N, K, 2] px.
    """
    from matplotlib.figure import Figure   # no pyplot: no global figure state, no GUI backend

    images = np.asarray(images).reshape(len(images), *np.asarray(images).shape[-2:])
    pred = np.asarray(pred)
    n = min(len(images), max_faces)
    cols = math.ceil(math.sqrt(n)) if n else 1
    rows = math.ceil(n / cols) if n else 1
    fig = Figure(figsize=(2.2 * cols, 2.2 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255 if images.dtype == np.uint8 else 1)
        if target is not None:
            t = np.asarray(target)[i]
            ax.scatter(t[:, 0], t[:, 1], s=22, facecolors="none", edgecolors="lime", linewidths=1.0)
        ax.scatter(pred[i, :, 0], pred[i, :, 1], s=14, c="red", marker="+", linewidths=1.0)
        ax.set_title(labels[i] if labels else str(i), fontsize=7)
    legend = "red +: predicted" + ("; green o: true" if target is not None else "")
    fig.suptitle(f"{title}\n{legend}" if title else legend, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def read_lookup(path: str | Path) -> pd.DataFrame:
    """Kaggle's IdLookupTable.csv (RowId, ImageId, FeatureName; a Location column is ignored)."""
    table = pd.read_csv(path)
    missing = [c for c in LOOKUP_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: row 0 (header): expected columns {list(LOOKUP_COLUMNS)}, "
                         f"missing {missing}")
    return table


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line + exit 2, not the usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m fkd_core.predict", description="Kaggle submission from a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="best.pt / checkpoint.pt or their folder")
    p.add_argument("--images", required=True, help="Kaggle test.csv (ImageId,Image)")
    p.add_argument("--lookup", help="IdLookupTable.csv (RowId,ImageId,FeatureName)")
    p.add_argument("--out", required=True, help="submission CSV to write")
    p.add_argument("--plot", help="PNG with a grid of faces and their predicted keypoints")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the mirrored image's prediction (default: as the model was "
                        "validated, the checkpoint's tta_flip)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        state, model = load_state_and_model(args.checkpoint, resolve_device(args.device))
        test = load_test_images(args.images)
        size = state["image_size"]
        if tuple(test.images.shape[-2:]) != (size, size):
            raise ValueError(f"{args.images}: images are {tuple(test.images.shape[-2:])}, "
                             f"the model was trained on {size}x{size}")
        schema = get_schema(state["schema"])
        lookup = read_lookup(args.lookup) if args.lookup else None
        flip = state["config"].get("tta_flip", False) if args.tta_flip is None else args.tta_flip
        pred = predict(model, test.images, batch_size=args.batch_size,
                       flip_perm=schema.flip_permutation() if flip else None)
        ids = list(test.image_ids) if test.image_ids else [str(i + 1) for i in range(len(test))]
        table = submission(pred, ids, schema, size, lookup, lookup_name=args.lookup or "")
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"wrote {len(table)} rows for {len(test)} images to {args.out} "
          f"(flip averaging {'on' if flip else 'off'})", file=sys.stderr)
    if args.plot:
        trained_on = "synthetic faces" if state["data"]["synthetic"] else Path(state["data"]["source"]).name
        title = (f"{state['config']['backbone']} trained on {trained_on} "
                 f"(epoch {state['epoch']}): {Path(args.images).name}")
        plot_predictions(test.images, pred, path=args.plot, title=title, labels=ids)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


api.make_callable(__name__, predict)   # `from fkd_core import predict; predict(model, images)`

if __name__ == "__main__":
    sys.exit(main())
